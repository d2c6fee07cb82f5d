"""Compute kernels behind one switch each: a plain-torch reference beside every fast version.

`model/` calls these functions and never the other way round.
"""

from kernels.attention import attention, attention_backend, available_attention_backends, set_attention_backend

__all__ = ["attention", "attention_backend", "available_attention_backends", "set_attention_backend"]
