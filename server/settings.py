"""Typed settings from a YAML file (`--config` or $KONTEXT_CONFIG) and $KONTEXT_* environment variables.

Precedence, lowest first: dataclass defaults, the YAML file, the environment, command-line flags.
"""

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from model.pipeline import SpeedOptions

ENV_PREFIX = "KONTEXT_"


@dataclass(frozen=True)
class Settings:
    model: str = "demo"  # a diffusers FLUX.1 Kontext folder, or "demo" for the tiny built-in model
    transformer: str | None = None  # a BFL single-file transformer that replaces the folder's transformer/
    device: str | None = None  # default: cuda when available, else cpu
    dtype: str | None = None  # float32 | bfloat16; default: bfloat16 on cuda, float32 on cpu
    # speed (model/pipeline.py SpeedOptions)
    quantize: str | None = None  # fp8: float8 GEMMs in the transformer blocks (lossy; Hopper)
    compile: bool = False  # torch.compile the blocks and the VAE (warms up before serving)
    cuda_graphs: bool = False  # with compile: CUDA graphs per shape
    attention: str = "sdpa"  # sdpa | math | cudnn | flash3
    kernels: str = "torch"  # torch | triton: fused LayerNorm + modulation, QK RMSNorm + RoPE, gated residual
    text_encoder_device: str | None = None  # cpu: keep T5 and CLIP off the GPU (with fp8: 12B on 24 GB)
    # serving
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "kontext-data"  # predictions database, outputs and uploads
    public_url: str | None = None  # base of the URLs we hand out, when behind a proxy; default: the request's
    api_keys: tuple[str, ...] = ()  # $KONTEXT_API_KEYS, comma-separated, plain or "sha256:<hex>"; none: no auth
    rate_limit_creates_per_minute: int = 0  # per key (or client address without keys); 0: no limit
    rate_limit_requests_per_minute: int = 0  # the same for every other request (polling, lists, files)
    fetch_allow: tuple[str, ...] = ()  # non-public networks (CIDR) image and webhook URLs may reach
    max_input_bytes: int = 50 * 1024 * 1024  # largest input image fetched
    max_body_bytes: int = 80 * 1024 * 1024  # largest request body (a 50 MB image as a base64 data URI fits)
    max_prompt_chars: int = 10_000  # T5 reads the first 512 tokens (about 2,000 characters of English) anyway
    max_output_pixels: int = 2048 * 2048  # largest explicit width × height
    max_image_pixels: int = 50_000_000  # largest input image decoded (decompression bombs)
    cors_origins: tuple[str, ...] = ()  # origins browsers may call from ("*" for any); none: CORS off
    insecure_no_auth: bool = False  # allow a non-loopback bind without keys
    max_batch_size: int = 4  # requests sharing one forward pass
    max_queue: int = 64  # queued requests beyond which create answers 429
    max_queue_delay_ms: float = 10.0  # how long an idle worker waits for a burst to gather
    shutdown_grace_s: float = 30.0  # on SIGTERM, how long running predictions may take to finish
    go_fast: bool = True  # step skipping for the OpenAI endpoints, which have no such field (Replicate's default)
    megapixels: float = 1.0  # scales the ~1 MP sizes the server picks from its tables (Replicate's `megapixels`)


def speed_options(settings: Settings) -> SpeedOptions:
    return SpeedOptions(quantize=settings.quantize, compile=settings.compile, cuda_graphs=settings.cuda_graphs,
                        attention=settings.attention, kernels=settings.kernels,
                        text_encoder_device=settings.text_encoder_device)


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """Coerce a YAML or environment value to the field's type: str, int, float, bool, or one of them | None."""
    args = typing.get_args(annotation)
    kind = typing.get_origin(annotation) or annotation
    if kind is not tuple:
        kind = next((a for a in args if a is not type(None)), annotation)
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
        if type(None) not in args:
            raise ValueError(f"setting {name} cannot be empty")
        return None
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(item).strip() for item in items if str(item).strip())
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"setting {name}: expected a boolean, got {value!r}")
        return value.lower() in ("1", "true", "yes", "on")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"setting {name}: expected {kind.__name__}, got {value!r}") from None


def load_settings(config: Path | None = None, env: Mapping[str, str] = os.environ) -> Settings:
    config = config or (Path(env[f"{ENV_PREFIX}CONFIG"]) if env.get(f"{ENV_PREFIX}CONFIG") else None)
    values: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(Path(config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: expected a mapping of settings")
        values.update(loaded)
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{config}: unknown settings {unknown}; known: {sorted(fields)}")
    for name in fields:
        if f"{ENV_PREFIX}{name.upper()}" in env:
            values[name] = env[f"{ENV_PREFIX}{name.upper()}"]
    hints = typing.get_type_hints(Settings)
    return Settings(**{name: _convert(name, value, hints[name]) for name, value in values.items()})
