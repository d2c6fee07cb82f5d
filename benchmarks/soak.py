"""Soak a running server: many predictions at high concurrency through both APIs, with status polling.

    python -m benchmarks.soak --base-url http://127.0.0.1:8000 --api-key KEY --image-url URL \
        [--total 500] [--concurrency 32] [--pid PID] [--out soak.json]

Half the predictions go through Replicate's API (created async, then polled), half through OpenAI's images
API (held open). Counts 5xx answers and lost predictions (accepted but never finished), reports the p50/p99
latency of `GET /v1/predictions/{id}` and, given the server's pid, its RSS growth after warm-up.
"""

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from benchmarks.common import save_result

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


@dataclass
class SoakReport:
    total: int
    concurrency: int
    seconds: float = 0.0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    server_errors: int = 0
    throttled: int = 0
    poll_latencies_ms: list[float] = field(default_factory=list, repr=False)
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None

    def summary(self) -> dict:
        polls = sorted(self.poll_latencies_ms)
        q = (lambda p: round(polls[min(len(polls) - 1, int(p * len(polls)))], 2)) if polls else (lambda p: None)
        body = {k: v for k, v in asdict(self).items() if k != "poll_latencies_ms"}
        body.update(polls=len(polls), poll_p50_ms=q(0.50), poll_p99_ms=q(0.99),
                    poll_mean_ms=round(statistics.fmean(polls), 2) if polls else None,
                    predictions_per_s=round(self.total / self.seconds, 2) if self.seconds else None)
        if self.rss_start_mb and self.rss_end_mb:
            body["rss_growth"] = round(self.rss_end_mb / self.rss_start_mb - 1, 4)
        return body


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def _replicate(client: httpx.AsyncClient, image_url: str, report: SoakReport, steps: int) -> None:
    body = {"input": {"prompt": "soak", "input_image": image_url, "num_inference_steps": steps,
                      "output_format": "png"}}
    response = await client.post("/v1/models/black-forest-labs/flux-kontext-dev/predictions", json=body)
    if response.status_code >= 500:
        report.server_errors += 1
        return
    if response.status_code == 429:
        report.throttled += 1
        return
    prediction_id = response.json()["id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        start = time.perf_counter()
        polled = await client.get(f"/v1/predictions/{prediction_id}")
        report.poll_latencies_ms.append((time.perf_counter() - start) * 1e3)
        if polled.status_code >= 500:
            report.server_errors += 1
        elif polled.status_code == 200 and polled.json()["status"] in TERMINAL:
            status = polled.json()["status"]
            report.succeeded += status == "succeeded"
            report.failed += status != "succeeded"
            return
        await asyncio.sleep(0.1)
    report.lost += 1


async def _openai(client: httpx.AsyncClient, report: SoakReport) -> None:
    response = await client.post("/v1/images/generations", json={"model": "flux-kontext-dev", "prompt": "soak"})
    if response.status_code >= 500:
        report.server_errors += 1
    elif response.status_code == 429:
        report.throttled += 1
    elif response.status_code == 200 and response.json()["data"]:
        report.succeeded += 1
    else:
        report.failed += 1


async def soak(base_url: str, api_key: str, image_url: str, total: int, concurrency: int,
               pid: int | None = None, steps: int = 4) -> SoakReport:
    report = SoakReport(total, concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=httpx.Timeout(600, connect=10), limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                if i % 2:
                    await _openai(client, report)
                else:
                    await _replicate(client, image_url, report, steps)

        start = time.perf_counter()
        warmup = min(2 * concurrency, total)  # RSS is compared from after two waves (caches, pools warmed)
        await asyncio.gather(*(one(i) for i in range(warmup)))
        report.rss_start_mb = rss_mb(pid)
        await asyncio.gather(*(one(i) for i in range(warmup, total)))
        report.seconds = round(time.perf_counter() - start, 2)
        report.rss_end_mb = rss_mb(pid)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--image-url", required=True, help="an input image the server may fetch")
    parser.add_argument("--total", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pid", type=int, help="the server's pid, to measure its RSS")
    parser.add_argument("--out", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    report = asyncio.run(soak(args.base_url, args.api_key, args.image_url, args.total, args.concurrency, args.pid,
                              args.steps))
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    if args.out:
        save_result(args.out, summary)


if __name__ == "__main__":
    main()
