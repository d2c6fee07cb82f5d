"""Without CUDA, run the Triton kernels through Triton's CPU interpreter.

Triton picks the interpreter when a kernel is defined, so this must run before kernels/triton_kernels.py is
imported (kernels/fused.py imports it on first use of the `triton` backend).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
