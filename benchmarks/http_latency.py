"""`kontext bench-http`: end-to-end latency and throughput of an image API, ours or a hosted one.

    kontext bench-http --base-url http://127.0.0.1:8000/v1 --api replicate --concurrency 1,2,4,8 --requests 16 \
        --image-url https://example.com/cat.png --input num_inference_steps=28

`--base-url` is the API root with its version, as the OpenAI client takes it (`https://api.replicate.com/v1`,
`http://host:8000/v1`). Each request is timed from its first byte sent until its image is ready: Replicate
predictions are created with `Prefer: wait` and polled until they end; OpenAI image requests are held open.
For each concurrency level, `--requests` requests run with that many in flight. Percentiles interpolate
linearly between the nearest ranks (numpy's default).
"""

import argparse
import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import RESULTS, git_commit

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
MAX_ERROR_SAMPLES = 5


@dataclass
class Outcome:
    seconds: float
    error: str | None = None  # None: the image is ready


@dataclass
class Level:
    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    throughput_per_s: float  # successful requests per second of wall time
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    mean_s: float | None
    error_samples: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, interpolating linearly between the two nearest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(concurrency: int, outcomes: list[Outcome], wall_s: float) -> Level:
    latencies = [o.seconds for o in outcomes if o.error is None]
    errors = [o.error for o in outcomes if o.error is not None]
    stat = (lambda q: round(percentile(latencies, q), 4)) if latencies else (lambda q: None)
    return Level(
        concurrency=concurrency, requests=len(outcomes), ok=len(latencies), errors=len(errors),
        wall_s=round(wall_s, 3), throughput_per_s=round(len(latencies) / wall_s, 4) if wall_s else 0.0,
        p50_s=stat(0.5), p90_s=stat(0.9), p99_s=stat(0.99),
        mean_s=round(sum(latencies) / len(latencies), 4) if latencies else None,
        error_samples=list(dict.fromkeys(errors))[:MAX_ERROR_SAMPLES],
    )


def describe(response: httpx.Response) -> str:
    """A short error line from an API error body (Replicate's `detail`, OpenAI's `error.message`)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    message = body.get("detail") or (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {str(message or body)[:200]}"


@dataclass
class Target:
    """What each request asks for."""

    api: str  # replicate | openai
    model: str
    prompt: str
    image_url: str | None
    image_bytes: bytes | None  # the OpenAI edit upload, downloaded once
    extra: dict[str, Any]
    timeout: float


async def replicate_request(client: httpx.AsyncClient, target: Target) -> Outcome:
    start = time.perf_counter()
    inputs = {"prompt": target.prompt, **({"input_image": target.image_url} if target.image_url else {}),
              **target.extra}
    response = await client.post(f"models/{target.model}/predictions", json={"input": inputs},
                                 headers={"Prefer": "wait=60"})
    if response.status_code >= 400:
        return Outcome(time.perf_counter() - start, describe(response))
    prediction = response.json()
    while prediction.get("status") not in TERMINAL:
        if time.perf_counter() - start > target.timeout:
            return Outcome(time.perf_counter() - start, f"timed out after {target.timeout:g} s")
        await asyncio.sleep(0.1)
        polled = await client.get(prediction["urls"]["get"])
        if polled.status_code >= 400:
            return Outcome(time.perf_counter() - start, describe(polled))
        prediction = polled.json()
    if prediction["status"] != "succeeded" or not prediction.get("output"):
        return Outcome(time.perf_counter() - start, f"{prediction['status']}: {prediction.get('error')}")
    return Outcome(time.perf_counter() - start)


async def openai_request(client: httpx.AsyncClient, target: Target) -> Outcome:
    start = time.perf_counter()
    fields = {"model": target.model, "prompt": target.prompt, **target.extra}
    if target.image_bytes is None:
        response = await client.post("images/generations", json=fields)
    else:
        response = await client.post("images/edits", data={k: str(v) for k, v in fields.items()},
                                     files={"image": ("image.png", target.image_bytes, "image/png")})
    seconds = time.perf_counter() - start
    if response.status_code >= 400:
        return Outcome(seconds, describe(response))
    data = response.json().get("data") or []
    if not data or not (data[0].get("url") or data[0].get("b64_json")):
        return Outcome(seconds, "the response holds no image")
    return Outcome(seconds)


async def run_level(client: httpx.AsyncClient, target: Target, concurrency: int, requests: int) -> Level:
    send = replicate_request if target.api == "replicate" else openai_request
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Outcome:
        async with gate:
            start = time.perf_counter()
            try:
                return await send(client, target)
            except httpx.HTTPError as err:
                return Outcome(time.perf_counter() - start, f"{type(err).__name__}: {err}"[:200])

    start = time.perf_counter()
    outcomes = await asyncio.gather(*(one() for _ in range(requests)))
    return summarize(concurrency, list(outcomes), time.perf_counter() - start)


async def benchmark(base_url: str, api_key: str, target: Target, levels: list[int], requests: int) -> list[Level]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers,
                                 timeout=httpx.Timeout(target.timeout, connect=10),
                                 limits=httpx.Limits(max_connections=2 * max(levels))) as client:
        return [await run_level(client, target, c, requests) for c in levels]


def chart(levels: list[Level], title: str, path: Path) -> None:
    """Latency percentiles (left axis) and throughput (right axis) against concurrency, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("the chart needs matplotlib: pip install 'kontext-server[bench]'") from None
    x = [level.concurrency for level in levels]
    figure, latency_axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, style in (("p50_s", "o-"), ("p90_s", "s--"), ("p99_s", "^:")):
        latency_axis.plot(x, [getattr(level, name) for level in levels], style, label=name[:3])
    latency_axis.set_xscale("log", base=2)
    latency_axis.set_xticks(x, [str(c) for c in x])
    latency_axis.set_xlabel("concurrent requests")
    latency_axis.set_ylabel("latency (s)")
    throughput_axis = latency_axis.twinx()
    throughput_axis.bar(x, [level.throughput_per_s for level in levels], width=[c * 0.25 for c in x],
                        alpha=0.25, color="gray", label="throughput")
    throughput_axis.set_ylabel("images per second")
    latency_axis.set_zorder(throughput_axis.get_zorder() + 1)  # lines over the bars
    latency_axis.patch.set_visible(False)
    lines, labels = latency_axis.get_legend_handles_labels()
    bars, bar_labels = throughput_axis.get_legend_handles_labels()
    latency_axis.legend(lines + bars, labels + bar_labels, loc="upper left")
    latency_axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def parse_extra(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are JSON when they parse (numbers, booleans), else strings."""
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--input takes key=value, got {pair!r}")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def concurrency_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--concurrency takes a comma-separated list of integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ValueError("--concurrency needs levels of at least 1")
    return levels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True, help="API root with its version, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api", choices=("replicate", "openai"), required=True)
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels (default 1,2,4,8)")
    parser.add_argument("--requests", type=int, default=8, help="requests per level (default 8)")
    parser.add_argument("--api-key", help="default: $KONTEXT_API_KEY, then $REPLICATE_API_TOKEN or $OPENAI_API_KEY")
    parser.add_argument("--model", help="default: black-forest-labs/flux-kontext-dev (replicate), "
                                        "flux-kontext-dev (openai)")
    parser.add_argument("--prompt", default="make the sky a deep sunset orange")
    parser.add_argument("--image-url", help="reference image: Replicate's input_image; OpenAI: uploaded to "
                                            "/images/edits (without it: text to image)")
    parser.add_argument("--input", action="append", default=[], metavar="KEY=VALUE",
                        help="extra input field, repeatable (e.g. num_inference_steps=28)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request (default 600)")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/bench-http-API.json)")
    parser.add_argument("--chart", type=Path, help="PNG chart (default: next to the JSON)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print a table, write JSON and the chart; 0 when every request succeeded, else 1."""
    if args.requests < 1:
        raise ValueError("--requests must be at least 1")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    levels = concurrency_levels(args.concurrency)
    token_variable = "REPLICATE_API_TOKEN" if args.api == "replicate" else "OPENAI_API_KEY"
    api_key = args.api_key or os.environ.get("KONTEXT_API_KEY") or os.environ.get(token_variable, "")
    image_bytes = None
    if args.image_url and args.api == "openai":
        image_bytes = httpx.get(args.image_url, follow_redirects=True, timeout=60).raise_for_status().content
    model = args.model or ("black-forest-labs/flux-kontext-dev" if args.api == "replicate" else "flux-kontext-dev")
    target = Target(args.api, model, args.prompt, args.image_url, image_bytes, parse_extra(args.input),
                    args.timeout)
    results = asyncio.run(benchmark(args.base_url, api_key, target, levels, args.requests))

    print(f"{'conc':>5} {'ok':>4} {'err':>4} {'p50 s':>8} {'p90 s':>8} {'p99 s':>8} {'img/s':>7}")
    for level in results:
        cells = [f"{v:8.3f}" if v is not None else f"{'-':>8}" for v in (level.p50_s, level.p90_s, level.p99_s)]
        print(f"{level.concurrency:>5} {level.ok:>4} {level.errors:>4} {' '.join(cells)} "
              f"{level.throughput_per_s:7.3f}")
        for sample in level.error_samples:
            print(f"      error: {sample}")

    out = args.out or RESULTS / f"bench-http-{args.api}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "bench-http", "base_url": args.base_url, "api": args.api, "model": model, "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "requests_per_level": args.requests,
        "inputs": {"prompt": args.prompt, "image_url": args.image_url, **target.extra},
        "levels": [asdict(level) for level in results],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    chart_path = args.chart or out.with_suffix(".png")
    chart(results, f"{args.api} · {model} · {args.base_url} · {args.requests} requests per level", chart_path)
    print(f"wrote {out} and {chart_path}")
    return 0 if all(level.errors == 0 for level in results) else 1
