"""Compute kernels behind one switch each: a plain-torch reference beside every fast version.

`model/` calls these functions and never the other way round.
"""

from kernels.attention import (
    attention,
    attention_backend,
    available_attention_backends,
    set_attention_backend,
)
from kernels.fused import (
    available_fused_backends,
    fused_backend,
    gated_residual,
    gated_residual_norm_modulate,
    norm_modulate,
    qk_norm_rope,
    set_fused_backend,
)

__all__ = [
    "attention",
    "attention_backend",
    "available_attention_backends",
    "available_fused_backends",
    "fused_backend",
    "gated_residual",
    "gated_residual_norm_modulate",
    "norm_modulate",
    "qk_norm_rope",
    "set_attention_backend",
    "set_fused_backend",
]
