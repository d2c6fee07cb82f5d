"""Scaled dot-product attention over [B, H, L, D] tensors, with a switchable backend.

`math` is the plain-torch reference (softmax(q kᵀ / √d) v in fp32); `sdpa` is PyTorch's
`scaled_dot_product_attention`, which picks flash / cuDNN / memory-efficient kernels on a GPU.
Faster backends register here under a name and are checked against `math` in the tests.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


_BACKENDS: dict[str, AttentionFn] = {"sdpa": _sdpa_attention, "math": _math_attention}
_active = "sdpa"


def available_attention_backends() -> list[str]:
    return sorted(_BACKENDS)


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with attention backend `name` (e.g. `math` for the reference)."""
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {available_attention_backends()}")
    previous, _active = _active, name
    try:
        yield
    finally:
        _active = previous


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of q, k, v [B, H, L, D] without mask; returns [B, L, H·D]."""
    out = _BACKENDS[_active](q, k, v)
    batch, heads, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
