"""What every benchmark records: where it ran, and how to time and count fairly."""

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def git_commit() -> str:
    """The short hash of the checkout the benchmark runs from."""
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    return run.stdout.strip() or "unknown"


def environment(device: torch.device) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "commit": git_commit()}


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of `fn` after `warmup` calls, synchronizing the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The measured dense matmul rate of this device and dtype: the roof our FLOP counts are held against."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, warmup=3, iters=10)
    return 2 * n**3 / seconds / 1e12


def save_result(name: str, result: object) -> Path:
    """Write `result` as JSON to benchmarks/results/`name`; returns the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
