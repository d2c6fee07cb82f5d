"""Scaled dot-product attention over [B, H, L, D] tensors, with a switchable backend.

`math` is the plain-torch reference (softmax(q kᵀ / √d) v in fp32). `sdpa` is PyTorch's
`scaled_dot_product_attention` with its own kernel choice (flash, memory-efficient, cuDNN or math). On a GPU,
`cudnn` pins cuDNN's fused attention (what Replicate's Kontext server uses) and `flash3` calls FlashAttention 3
(Hopper) when `flash_attn_interface` is installed. Every backend is checked against `math` in the tests.
"""

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # [B, H, L, D] ×3 → [B, L, H·D]


def _merge_heads(out: Tensor) -> Tensor:
    batch, heads, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
    return _merge_heads((scores.softmax(dim=-1) @ v.float()).to(q.dtype))


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _merge_heads(F.scaled_dot_product_attention(q, k, v))


def _cudnn_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return _merge_heads(F.scaled_dot_product_attention(q, k, v))


def _flash3_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn_interface import flash_attn_func

    # FlashAttention takes [B, L, H, D]: the transposed views need no copy, and its output is already
    # laid out as [B, L, H, D], so merging the heads is a free reshape.
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out[0] if isinstance(out, tuple) else out  # older releases also return the log-sum-exp
    return out.reshape(*out.shape[:2], -1)


def _usable() -> dict[str, AttentionFn]:
    backends: dict[str, AttentionFn] = {"sdpa": _sdpa_attention, "math": _math_attention}
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        backends["cudnn"] = _cudnn_attention
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn_interface") is not None:
        backends["flash3"] = _flash3_attention
    return backends


_BACKENDS = _usable()
_active = "sdpa"


def available_attention_backends() -> list[str]:
    """The backends this machine can run."""
    return sorted(_BACKENDS)


def set_attention_backend(name: str) -> str:
    """Use backend `name` from now on, in every thread; returns the previous one."""
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"unknown or unavailable attention backend {name!r}; "
                         f"available here: {available_attention_backends()}")
    previous, _active = _active, name
    return previous


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with attention backend `name` (e.g. `math` for the reference)."""
    previous = set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of q, k, v [B, H, L, D] without mask; returns [B, L, H·D]."""
    return _BACKENDS[_active](q, k, v)
