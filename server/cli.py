"""The `kontext` command line: `generate` (one image, no server), `serve`, and `bench-http` (an API's latency)."""

import argparse
import io
import logging
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import httpx
import torch
from PIL import Image, UnidentifiedImageError

from benchmarks import http_latency
from kernels import available_attention_backends, available_fused_backends
from model.demo import DEMO_NOTICE
from model.pipeline import DTYPES, QUANTIZATIONS, GenerationRequest, default_device, default_dtype, load
from model.weights import CheckpointError
from server.settings import Settings, load_settings, speed_options

log = logging.getLogger("kontext")


def read_image(source: str) -> Image.Image:
    """An image from a local path or an http(s) URL."""
    if source.startswith(("http://", "https://")):
        response = httpx.get(source, follow_redirects=True, timeout=30)
        response.raise_for_status()
        data = response.content
    else:
        data = Path(source).read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which model to load and how it runs: the same flags for `generate` and `serve`."""
    parser.add_argument("--config", type=Path, help="settings YAML (see configs/); also $KONTEXT_CONFIG")
    parser.add_argument("--model", help='diffusers FLUX.1 Kontext folder, or "demo" (the default)')
    parser.add_argument("--transformer", help="BFL single-file transformer (flux1-kontext-dev.safetensors)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="fp8: float8 GEMMs in the blocks (lossy, Hopper)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks and the VAE")
    parser.add_argument("--cuda-graphs", action="store_true", help="with --compile: replay CUDA graphs per shape")
    parser.add_argument("--attention", choices=available_attention_backends(), help="attention kernels (default sdpa)")
    parser.add_argument("--kernels", choices=available_fused_backends(),
                        help="triton: fused norm / modulation / RoPE / residual kernels (default torch)")
    parser.add_argument("--text-encoder-device",
                        help="cpu keeps T5 and CLIP off the GPU (with --quantize fp8 the 12B model fits 24 GB)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kontext", description="FLUX.1 Kontext [dev] inference")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate or edit one image")
    _model_arguments(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--image", help="reference image to edit: a path or an http(s) URL")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--aspect-ratio", help="e.g. 16:9 (Replicate's table of preferred resolutions)")
    gen.add_argument("--no-auto-resize", action="store_true",
                     help="keep the reference at its own size (rounded down to 16) instead of its preferred resolution")
    gen.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    gen.add_argument("--guidance", type=float, default=2.5, help="distilled guidance (default 2.5)")
    gen.add_argument("--seed", type=int, help="random when omitted; printed either way")
    gen.add_argument("--go-fast", action="store_true",
                     help="skip about half the transformer passes, extrapolating them (faster, slightly different)")
    gen.add_argument("--out", type=Path, required=True, help="output PNG")

    serve = commands.add_parser("serve", help="serve the Replicate- and OpenAI-compatible HTTP APIs")
    _model_arguments(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-dir", help="predictions database, outputs and uploads (default ./kontext-data)")
    serve.add_argument("--public-url", help="base of the URLs handed to clients, when behind a proxy")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow binding a non-loopback address without API keys")

    bench = commands.add_parser("bench-http", help="latency and throughput of an image API (ours or hosted)")
    http_latency.add_arguments(bench)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the config file and environment, overridden by the flags that were given."""
    names = {f.name for f in fields(Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v not in (None, False)}
    settings = replace(load_settings(args.config), **overrides)
    if settings.dtype is not None and settings.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {settings.dtype!r}")
    for name, value, choices in (("attention", settings.attention, available_attention_backends()),
                                 ("kernels", settings.kernels, available_fused_backends()),
                                 ("quantize", settings.quantize, [None, *QUANTIZATIONS])):
        if value not in choices:
            raise ValueError(f"{name} {value!r} is not available here; choose from {[c for c in choices if c]}")
    if settings.device and torch.device(settings.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {settings.device!r} was asked for, but this machine has no usable CUDA device")
    return settings


def serve(args: argparse.Namespace) -> None:
    from server.app import is_loopback, serve_forever

    settings = _settings(args)
    if not settings.api_keys:
        if not is_loopback(settings.host) and not settings.insecure_no_auth:
            raise ValueError(f"refusing to serve {settings.host} without API keys: set KONTEXT_API_KEYS "
                             "(or api_keys in the config), bind 127.0.0.1, or pass --insecure-no-auth")
        log.warning("no API keys configured: requests are not authenticated%s",
                    "" if not is_loopback(settings.host) else " (bound to loopback only)")
    if settings.model == "demo":
        log.warning(DEMO_NOTICE)
    serve_forever(settings)


def generate(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if (args.width is None) != (args.height is None):
        raise ValueError("give both --width and --height, or neither")
    if args.width is not None and args.aspect_ratio is not None:
        raise ValueError("give either --width/--height or --aspect-ratio, not both")
    device = settings.device or default_device()
    dtype = DTYPES[settings.dtype] if settings.dtype else default_dtype(device)
    image = read_image(args.image) if args.image else None
    request = GenerationRequest(
        prompt=args.prompt, image=image, width=args.width, height=args.height, aspect_ratio=args.aspect_ratio,
        auto_resize=not args.no_auto_resize, num_inference_steps=args.steps, guidance=args.guidance, seed=args.seed,
        go_fast=args.go_fast,
    )

    if settings.model == "demo":
        log.warning(DEMO_NOTICE)
    start = time.perf_counter()
    pipeline = load(settings.model, settings.transformer, device, dtype, speed_options(settings))
    loaded = time.perf_counter()
    result = pipeline.generate(request)
    done = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.out, format="PNG")
    print(
        f"seed {result.seed}: {result.width}x{result.height}, {args.steps} steps on {device} ({str(dtype)[6:]}), "
        f"load {loaded - start:.1f} s, generate {done - loaded:.2f} s -> {args.out}"
    )
    if settings.model == "demo":
        print(f"note: {DEMO_NOTICE}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        status = {"generate": generate, "serve": serve, "bench-http": http_latency.run}[args.command](args)
    except (ValueError, CheckpointError, FileNotFoundError, UnidentifiedImageError, httpx.HTTPError) as err:
        print(f"kontext: error: {err}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
