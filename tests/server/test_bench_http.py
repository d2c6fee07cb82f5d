"""`kontext bench-http` against the real server, through both APIs, plus its percentile arithmetic."""

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.http_latency import percentile
from server.cli import main
from tests.server.conftest import API_KEY, RunningServer


def bench(server: RunningServer, tmp_path: Path, api: str, *extra: str, key: str = API_KEY) -> tuple[int, dict]:
    out = tmp_path / f"{api}.json"
    status = main(["bench-http", "--base-url", f"{server.url}/v1", "--api", api, "--concurrency", "1,2",
                   "--requests", "3", "--api-key", key, "--input", "num_inference_steps=4", "--out", str(out),
                   *extra])
    return status, json.loads(out.read_text())


@pytest.mark.parametrize("api,with_image", [("replicate", True), ("openai", False), ("openai", True)])
def test_every_request_is_timed_and_reported(server: RunningServer, image_host: str, tmp_path: Path, api: str,
                                             with_image: bool) -> None:
    extra = ["--image-url", f"{image_host}/ref.png"] if with_image else []
    status, report = bench(server, tmp_path, api, *extra)
    assert status == 0
    assert report["api"] == api and report["inputs"]["num_inference_steps"] == 4
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert (level["requests"], level["ok"], level["errors"]) == (3, 3, 0)
        assert 0 < level["p50_s"] <= level["p90_s"] <= level["p99_s"] and level["throughput_per_s"] > 0
    with Image.open(tmp_path / f"{api}.png") as chart:
        assert chart.format == "PNG" and chart.width > 300


def test_a_wrong_key_counts_every_request_as_an_error(server: RunningServer, tmp_path: Path) -> None:
    status, report = bench(server, tmp_path, "replicate", key="sk-wrong")
    assert status == 1
    for level in report["levels"]:
        assert (level["ok"], level["errors"], level["p50_s"]) == (0, 3, None)
        assert level["error_samples"] == ["HTTP 401: You did not pass a valid authentication token"]
    assert server.health()["status"] == "ready"  # and the server keeps serving


def test_bad_arguments_exit_2(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-http", "--base-url", server.url, "--api", "openai", "--concurrency", "0"]) == 2
    assert "--concurrency needs levels of at least 1" in capsys.readouterr().err


def test_percentiles_interpolate_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert (percentile(values, 0), percentile(values, 0.5), percentile(values, 1)) == (1.0, 3.0, 5.0)
    assert percentile(values, 0.9) == pytest.approx(4.6)
    assert percentile([7.0], 0.99) == 7.0
