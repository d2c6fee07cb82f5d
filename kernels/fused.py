"""The memory-bound elementwise parts of the FLUX blocks, one pass over memory each, behind one switch.

`torch` is the reference: the model's code before the fusion, op for op, so its numerics are the model's (each
op rounds to the input dtype). `triton` fuses each function into one kernel that computes in fp32 and rounds
once (kernels/triton_kernels.py, imported only when chosen). It is available when triton is installed and
either CUDA is available or TRITON_INTERPRET=1 (Triton's CPU interpreter: correct, but no measure of speed).

Shapes: x, y [B, L, C]; shift, scale, gate [B or 1, 1, C]; qkv [B, L, 3·H·D]; freqs [B or 1, 1, L, D/2, 2, 2].
"""

import importlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6  # of both the LayerNorms and the q/k RMSNorms


def _torch_norm_modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return (1 + scale) * F.layer_norm(x, x.shape[-1:], eps=EPS) + shift


def _torch_gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    return x + gate * y


def _torch_rms_norm(x: Tensor, scale: Tensor) -> Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * scale


def _torch_rope(x: Tensor, freqs: Tensor) -> Tensor:
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]).reshape(x.shape).type_as(x)


def _torch_qk_norm_rope(
    qkv: Tensor, q_scale: Tensor, k_scale: Tensor, freqs: Tensor, num_heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    batch, length, _ = qkv.shape
    q, k, v = qkv.view(batch, length, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = _torch_rms_norm(q, q_scale).to(v), _torch_rms_norm(k, k_scale).to(v)
    return _torch_rope(q, freqs), _torch_rope(k, freqs), v


def available_fused_backends() -> list[str]:
    """The backends this machine can run (checked on each call: TRITON_INTERPRET may be set after import)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
    triton = importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or interpret)
    return ["torch", "triton"] if triton else ["torch"]


_active = "torch"
_triton: ModuleType | None = None


def set_fused_backend(name: str) -> str:
    """Use backend `name` from now on, in every thread; returns the previous one."""
    global _active, _triton
    if name not in available_fused_backends():
        raise ValueError(f"unknown or unavailable fused backend {name!r}; "
                         f"available here: {available_fused_backends()}")
    if name == "triton" and _triton is None:
        _triton = importlib.import_module("kernels.triton_kernels")
    previous, _active = _active, name
    return previous


@contextmanager
def fused_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with fused backend `name` (`torch` for the reference)."""
    previous = set_fused_backend(name)
    try:
        yield
    finally:
        set_fused_backend(previous)


def norm_modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """(1 + scale) · LayerNorm(x) + shift: the adaLN input of each attention and MLP (no affine, eps 1e-6)."""
    if _active == "triton":
        return _triton.norm_modulate(x, shift, scale)
    return _torch_norm_modulate(x, shift, scale)


def gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate · y: a block's output added to the residual stream."""
    if _active == "triton":
        return _triton.gated_residual(x, gate, y)
    return _torch_gated_residual(x, gate, y)


def gated_residual_norm_modulate(
    x: Tensor, gate: Tensor, y: Tensor, shift: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    """(x + gate · y, norm_modulate of that): the double block's attention residual and its MLP input.

    The second output normalizes the first as returned (rounded to its dtype), as the unfused code does.
    """
    if _active == "triton":
        return _triton.gated_residual_norm_modulate(x, gate, y, shift, scale)
    residual = _torch_gated_residual(x, gate, y)
    return residual, _torch_norm_modulate(residual, shift, scale)


def qk_norm_rope(
    qkv: Tensor, q_scale: Tensor, k_scale: Tensor, freqs: Tensor, num_heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v [B, H, L, D] from a fused projection qkv [B, L, 3·H·D] laid out (q | k | v), heads inside each.

    q and k are RMS-normalized over D (in fp32, eps 1e-6), times their learned scale [D], then rotated by
    `freqs` (RoPE, interleaved pairs); v is passed through. qkv may be a column slice of a wider tensor (the
    single block's linear1 output): only its last dimension must be contiguous. The `triton` backend returns
    three contiguous tensors; the reference returns v as a view of qkv, as the model does.
    """
    if _active == "triton":
        return _triton.qk_norm_rope(qkv, q_scale, k_scale, freqs, num_heads)
    return _torch_qk_norm_rope(qkv, q_scale, k_scale, freqs, num_heads)
