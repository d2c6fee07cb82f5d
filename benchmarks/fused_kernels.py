"""The fused elementwise ops of the FLUX blocks: torch reference vs the Triton kernels, one op at a time.

    python -m benchmarks.fused_kernels [--out FILE]     # CUDA: the 12B shapes, 8704 tokens (a 1024² edit)

Reports median ms per call and achieved GB/s (the bytes each op must read and write, over its time); on
CUDA also the reference under torch.compile, which fuses the same elementwise ops itself. Without CUDA only
the torch reference is timed, at a small token count: Triton's CPU interpreter is correct but no measure of
speed.
"""

import argparse
import json
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.common import environment, median_seconds, save_result
from kernels import fused_backend, gated_residual, gated_residual_norm_modulate, norm_modulate, qk_norm_rope
from model.layers import rope_frequencies

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
AXES = (16, 56, 56)  # FLUX's RoPE channels per position axis (D = 128)


def nbytes(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cases(tokens: int, hidden: int, heads: int, mlp: int, device: torch.device, dtype: torch.dtype):
    """name → (fn, args, bytes read and written) at one block's shapes; batch 1, as the server runs."""
    generator = torch.Generator(device).manual_seed(0)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    x, y = randn(1, tokens, hidden), randn(1, tokens, hidden)
    shift, scale, gate = randn(1, 1, 3 * hidden).chunk(3, dim=-1)
    head_dim = hidden // heads
    wide = randn(1, tokens, 3 * hidden + mlp)  # the single block's linear1 output: qkv | mlp
    qkv = wide[..., : 3 * hidden].contiguous()  # the double block's qkv projection
    q_scale, k_scale = randn(head_dim), randn(head_dim)
    ids = torch.randint(0, 64, (1, tokens, len(AXES)), device=device, generator=generator)
    freqs = rope_frequencies(ids, AXES, 10_000)
    modulation, gated, rope = nbytes(shift, scale), nbytes(gate), nbytes(freqs, q_scale, k_scale)
    return {
        "norm_modulate": (norm_modulate, (x, shift, scale), 2 * nbytes(x) + modulation),
        "gated_residual": (gated_residual, (x, gate, y), 3 * nbytes(x) + gated),
        "gated_residual_norm_modulate": (
            gated_residual_norm_modulate, (x, gate, y, shift, scale), 4 * nbytes(x) + gated + modulation
        ),
        "qk_norm_rope": (qk_norm_rope, (qkv, q_scale, k_scale, freqs, heads), 2 * nbytes(qkv) + rope),
        "qk_norm_rope_single_block_slice": (
            qk_norm_rope, (wide[..., : 3 * hidden], q_scale, k_scale, freqs, heads), 2 * nbytes(qkv) + rope
        ),
    }


def timed(fn: Callable[..., object], args: tuple, backend: str, device: torch.device, warmup: int,
          iters: int) -> float:
    with fused_backend(backend):
        return median_seconds(lambda: fn(*args), device, warmup, iters)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if cuda else "float32")
    parser.add_argument("--tokens", type=int, default=8704 if cuda else 512, help="512 text + 2 × 4096 image")
    parser.add_argument("--warmup", type=int, default=10 if cuda else 2)
    parser.add_argument("--iters", type=int, default=100 if cuda else 10)
    parser.add_argument("--out", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device, dtype = torch.device("cuda" if cuda else "cpu"), DTYPES[args.dtype]
    if not cuda:
        print("No CUDA device: Triton timing needs a GPU (its CPU interpreter is no measure of speed); "
              "timing the torch reference only.")
    ops = {}
    with torch.no_grad():
        for name, (fn, fn_args, moved) in cases(args.tokens, 3072, 24, 12288, device, dtype).items():
            implementations = {"torch": (fn, "torch")}
            if cuda:
                implementations |= {"torch_compiled": (torch.compile(fn), "torch"), "triton": (fn, "triton")}
            times = {
                impl: timed(call, fn_args, backend, device, args.warmup, args.iters)
                for impl, (call, backend) in implementations.items()
            }
            ops[name] = {
                "megabytes": round(moved / 1e6, 1),
                **{f"{impl}_ms": round(s * 1e3, 4) for impl, s in times.items()},
                **{f"{impl}_gb_per_s": round(moved / s / 1e9, 1) for impl, s in times.items()},
                **({"speedup_vs_torch": round(times["torch"] / times["triton"], 2)} if cuda else {}),
            }
    result = {
        **environment(device),
        "benchmark": "fused_kernels",
        "dtype": args.dtype,
        "shapes": {"tokens": args.tokens, "hidden": 3072, "heads": 24, "head_dim": 128},
        "ops": ops,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        save_result(args.out, result)


if __name__ == "__main__":
    main()
