"""The soak benchmark in its short form: both APIs, polling, a bounded run; no 5xx, nothing lost."""

import asyncio
from pathlib import Path

import pytest

from benchmarks.soak import soak
from tests.server.conftest import API_KEY, start_server


@pytest.mark.slow
def test_short_soak_loses_nothing(tmp_path: Path, image_host: str) -> None:
    server = start_server(tmp_path / "data", max_queue="256")
    try:
        report = asyncio.run(soak(server.url, API_KEY, f"{image_host}/ref.png", total=96, concurrency=16,
                                  pid=server.process.pid))
    finally:
        server.stop()
    summary = report.summary()
    assert summary["server_errors"] == 0 and summary["lost"] == 0 and summary["throttled"] == 0, summary
    assert summary["succeeded"] == 96 and summary["polls"] > 0
    assert summary["rss_growth"] < 0.10, summary
