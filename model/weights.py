"""Transformer checkpoints: diffusers folders (single or sharded) and BFL single files, streamed from safetensors.

Every source tensor is described by where its rows go in our BFL-named parameters (a `Placement`), which covers
plain renames, fused q/k/v and linear1 projections, and the swapped halves of the final modulation alike.
The model is allocated once on the target device and each placement is read from the file straight into its
rows (through one buffer of that size only when the dtype or device differs), so host memory never holds a
second copy of the weights. safetensors' own reader cannot read into memory we already own, hence
`SafetensorsFile`; the format is a JSON header followed by raw little-endian arrays.
"""

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from model.config import TransformerConfig
from model.transformer import FluxTransformer

BFL_PREFIXES = ("model.diffusion_model.",)
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model; the message names file and key."""


@dataclass(frozen=True)
class Placement:
    """Rows [src_start, src_stop) of a source tensor go to rows starting at dst_start of parameter `target`."""

    target: str
    src_start: int = 0
    src_stop: int | None = None
    dst_start: int = 0


Placements = dict[str, list[Placement]]


def bfl_placements(model: FluxTransformer) -> Placements:
    return {name: [Placement(name)] for name in model.state_dict()}


def diffusers_placements(config: TransformerConfig) -> Placements:
    """Where each key of a diffusers `FluxTransformer2DModel` goes in our model."""
    table: Placements = {}
    hidden = config.hidden_size

    def linear(src: str, dst: str, dst_start: int = 0) -> None:
        for suffix in ("weight", "bias"):
            table[f"{src}.{suffix}"] = [Placement(f"{dst}.{suffix}", dst_start=dst_start)]

    def norm(src: str, dst: str) -> None:
        table[f"{src}.weight"] = [Placement(f"{dst}.scale")]

    embedders = {"timestep_embedder": "time_in", "text_embedder": "vector_in"}
    if config.guidance_embed:
        embedders["guidance_embedder"] = "guidance_in"
    for src, dst in embedders.items():
        linear(f"time_text_embed.{src}.linear_1", f"{dst}.in_layer")
        linear(f"time_text_embed.{src}.linear_2", f"{dst}.out_layer")
    linear("context_embedder", "txt_in")
    linear("x_embedder", "img_in")

    for i in range(config.depth):
        src, dst = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for stream, attn_names, ff in (("img", ("to_q", "to_k", "to_v"), "ff"),
                                       ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"), "ff_context")):
            for j, name in enumerate(attn_names):
                linear(f"{src}.attn.{name}", f"{dst}.{stream}_attn.qkv", dst_start=j * hidden)
            linear(f"{src}.{ff}.net.0.proj", f"{dst}.{stream}_mlp.0")
            linear(f"{src}.{ff}.net.2", f"{dst}.{stream}_mlp.2")
        linear(f"{src}.norm1.linear", f"{dst}.img_mod.lin")
        linear(f"{src}.norm1_context.linear", f"{dst}.txt_mod.lin")
        linear(f"{src}.attn.to_out.0", f"{dst}.img_attn.proj")
        linear(f"{src}.attn.to_add_out", f"{dst}.txt_attn.proj")
        norm(f"{src}.attn.norm_q", f"{dst}.img_attn.norm.query_norm")
        norm(f"{src}.attn.norm_k", f"{dst}.img_attn.norm.key_norm")
        norm(f"{src}.attn.norm_added_q", f"{dst}.txt_attn.norm.query_norm")
        norm(f"{src}.attn.norm_added_k", f"{dst}.txt_attn.norm.key_norm")

    for i in range(config.depth_single_blocks):
        src, dst = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for j, name in enumerate(("to_q", "to_k", "to_v")):
            linear(f"{src}.attn.{name}", f"{dst}.linear1", dst_start=j * hidden)
        linear(f"{src}.proj_mlp", f"{dst}.linear1", dst_start=3 * hidden)
        linear(f"{src}.proj_out", f"{dst}.linear2")
        linear(f"{src}.norm.linear", f"{dst}.modulation.lin")
        norm(f"{src}.attn.norm_q", f"{dst}.norm.query_norm")
        norm(f"{src}.attn.norm_k", f"{dst}.norm.key_norm")

    linear("proj_out", "final_layer.linear")
    # diffusers stores the final modulation as (scale, shift); BFL as (shift, scale).
    for suffix in ("weight", "bias"):
        table[f"norm_out.linear.{suffix}"] = [
            Placement(f"final_layer.adaLN_modulation.1.{suffix}", 0, hidden, hidden),
            Placement(f"final_layer.adaLN_modulation.1.{suffix}", hidden, 2 * hidden, 0),
        ]
    return table


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint: one file, or a folder with one file or a sharded index."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    index = path / f"{DIFFUSERS_WEIGHTS}.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from err
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        files = [path / DIFFUSERS_WEIGHTS]
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: missing checkpoint file")
    return files


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape[1:])


class SafetensorsFile:
    """One safetensors file: its header, checked against the file size, and reads of row ranges."""

    def __init__(self, path: Path):
        self.name = str(path)
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if 8 + header_len > size:
                    raise ValueError("the file is shorter than its header")
                header = json.loads(f.read(header_len))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read safetensors file ({err})") from err
        header.pop("__metadata__", None)
        self.tensors: dict[str, TensorInfo] = {}
        for key, entry in header.items():
            try:
                info = TensorInfo(
                    SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + header_len + entry["data_offsets"][0]
                )
                nbytes = entry["data_offsets"][1] - entry["data_offsets"][0]
            except (KeyError, TypeError, IndexError) as err:
                raise CheckpointError(f"{path}: key {key!r} has an invalid header entry ({err!r})") from err
            if nbytes != info.dtype.itemsize * math.prod(info.shape) or not info.shape:
                raise CheckpointError(f"{path}: key {key!r} has {nbytes} bytes for shape {list(info.shape)}")
            if info.offset + nbytes > size:
                raise CheckpointError(f"{path}: cannot read key {key!r}: the file is truncated")
            self.tensors[key] = info

    def read_rows(self, key: str, start: int, out: torch.Tensor) -> None:
        """Fill `out` (contiguous, any device and dtype) with rows start.. of tensor `key`."""
        info = self.tensors[key]
        direct = out.device.type == "cpu" and out.dtype == info.dtype
        buffer = out if direct else torch.empty(out.shape, dtype=info.dtype)
        with open(self.name, "rb") as f:
            f.seek(info.offset + start * info.row_bytes)
            if f.readinto(buffer.view(-1).view(torch.uint8).numpy()) != buffer.numel() * info.dtype.itemsize:
                raise CheckpointError(f"{self.name}: cannot read key {key!r}: the file is truncated")
        if not direct:
            out.copy_(buffer)


class StateDict:
    """Tensors already in memory (e.g. a diffusers model's state dict), read like a file."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], name: str = "state dict"):
        self.name, self.tensors = name, tensors

    def read_rows(self, key: str, start: int, out: torch.Tensor) -> None:
        out.copy_(self.tensors[key][start : start + out.shape[0]])


TensorSource = SafetensorsFile | StateDict


def strip_prefix(key: str) -> str:
    for prefix in BFL_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def is_diffusers_layout(keys: list[str]) -> bool:
    return any(key.startswith(("transformer_blocks.", "single_transformer_blocks.")) for key in keys)


def _check_plan(
    sources: dict[str, tuple[TensorSource, str]], placements: Placements, params: dict[str, torch.Tensor]
) -> None:
    """Fail before allocating anything if a key is missing, unexpected, misshapen, or a row is left unfilled."""
    for key in placements:
        if key not in sources:
            names = ", ".join(sorted({source.name for source, _ in sources.values()}))
            raise CheckpointError(f"{names}: missing key {key!r}")
    rows: dict[str, int] = defaultdict(int)
    for key, (source, raw_key) in sources.items():
        if key not in placements:
            raise CheckpointError(f"{source.name}: unexpected key {raw_key!r} (not a FLUX transformer of this shape?)")
        shape = tuple(source.tensors[raw_key].shape)
        for p in placements[key]:
            target = params[p.target]
            stop = shape[0] if p.src_stop is None else p.src_stop
            n = stop - p.src_start
            if stop > shape[0] or shape[1:] != tuple(target.shape[1:]) or p.dst_start + n > target.shape[0]:
                raise CheckpointError(
                    f"{source.name}: key {raw_key!r} has shape {list(shape)}, which does not fit {p.target} "
                    f"{list(target.shape)} of this model configuration"
                )
            rows[p.target] += n
    for name, target in params.items():
        if rows[name] != target.shape[0]:
            raise CheckpointError(f"the checkpoint does not fill every row of {name}")


@torch.no_grad()
def build_transformer(
    sources: list[TensorSource], config: TransformerConfig, device: torch.device | str, dtype: torch.dtype
) -> FluxTransformer:
    """Allocate the model once on `device` in `dtype` and fill every row from the sources (either layout)."""
    raw_keys = [(source, key) for source in sources for key in source.tensors]
    with torch.device("meta"):
        model = FluxTransformer(config).to(dtype)
    if is_diffusers_layout([key for _, key in raw_keys]):
        placements, rename = diffusers_placements(config), {key: key for _, key in raw_keys}
    else:
        placements, rename = bfl_placements(model), {key: strip_prefix(key) for _, key in raw_keys}
    located: dict[str, tuple[TensorSource, str]] = {}  # our key -> (source, key in that source)
    for source, key in raw_keys:
        if rename[key] in located:
            raise CheckpointError(f"{source.name}: key {key!r} also appears in {located[rename[key]][0].name}")
        located[rename[key]] = (source, key)
    _check_plan(located, placements, dict(model.state_dict()))

    model = model.to_empty(device=device)
    params = dict(model.state_dict())
    for source, key in raw_keys:
        for p in placements[rename[key]]:
            stop = source.tensors[key].shape[0] if p.src_stop is None else p.src_stop
            source.read_rows(key, p.src_start, params[p.target][p.dst_start : p.dst_start + stop - p.src_start])
    return model.eval().requires_grad_(False)


def load_transformer(
    path: Path, config: TransformerConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> FluxTransformer:
    """Our transformer from a safetensors checkpoint: a diffusers transformer folder or a BFL single file."""
    return build_transformer([SafetensorsFile(file) for file in safetensors_files(Path(path))], config, device, dtype)
