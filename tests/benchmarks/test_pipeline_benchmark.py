"""The end-to-end benchmark: it runs, compares like with like, and records what the issue asks for."""

import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import common
from benchmarks import pipeline as bench
from model.demo import FULL, random_pipeline

FIELDS = {"device", "torch", "commit", "case", "steps", "batch", "mode", "ours_s", "diffusers_s", "peak_mem_gb"}


def test_full_size_components_have_the_real_parameter_counts() -> None:
    components = random_pipeline(FULL, device="meta", dtype=torch.bfloat16)
    count = {name: sum(p.numel() for p in getattr(components, name).parameters()) / 1e9
             for name in ("transformer", "text_encoder_2", "text_encoder", "vae")}
    assert count["transformer"] == pytest.approx(11.901, abs=0.001)
    # T5-XXL's encoder is 4.76 B with its 32k vocabulary; the generated tokenizer's vocabulary is tiny.
    assert count["text_encoder_2"] == pytest.approx(4.63, abs=0.01)
    assert count["vae"] == pytest.approx(0.0838, abs=0.001)


def test_cpu_run_writes_one_result_per_case_and_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline", "--side", "128", "--steps", "3", "--warmup", "0", "--iters", "1",
                                      "--modes", "float32", "--go-fast", "--out", "run.json"])
    bench.main()
    results = json.loads((tmp_path / "run.json").read_text())
    assert [(r["case"], r["mode"]) for r in results] == [
        ("kontext-edit-128", "float32"), ("t2i-128", "float32"),
        ("kontext-edit-128", "float32+go_fast"), ("t2i-128", "float32+go_fast"),
    ]
    for result in results:
        assert FIELDS <= set(result) and result["ours_s"] > 0 and result["diffusers_s"] > 0
        assert result["steps"] == 3 and result["batch"] == 1 and result["peak_mem_gb"] is None  # CPU: no peak
    assert "| kontext-edit-128 | float32 |" in (tmp_path / "run.md").read_text()
