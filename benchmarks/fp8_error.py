"""What `--quantize fp8` costs in accuracy and buys in memory and time, layer by layer and end to end.

    python -m benchmarks.fp8_error                       # CUDA: the 12B model, 512 + 4096 + 4096 tokens
    python -m benchmarks.fp8_error --out fp8_error-cpu.json

Random bf16 weights. Each block linear's fp8 output is compared with its bf16 output on the very input the
bf16 model feeds it (a forward hook; the last single block's linear1 runs in two row slices, not as a module,
so it is covered by the end-to-end figure only), then the whole model's velocity before and after
quantization. Without CUDA the 12B widths run with one block of each kind at 64 + 256 + 256 tokens.
"""

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn

from benchmarks.common import environment, median_seconds, save_result
from kernels.fp8 import FP8Linear
from model.config import preset
from model.demo import constructed_on
from model.quantize import DOUBLE_BLOCK_LINEARS, SINGLE_BLOCK_LINEARS, quantize_fp8
from model.sampling import image_ids
from model.transformer import FluxTransformer


def relative_error(got: Tensor, expected: Tensor) -> float:
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


def block_linears(model: FluxTransformer) -> dict[str, nn.Linear]:
    named = {}
    for kind, blocks, paths in (("double", model.double_blocks, DOUBLE_BLOCK_LINEARS),
                                ("single", model.single_blocks, SINGLE_BLOCK_LINEARS)):
        for i, block in enumerate(blocks):
            for path in paths:
                named[f"{kind}_blocks.{i}.{path}"] = block.get_submodule(path)
    return named


def per_layer_errors(model: FluxTransformer, run: Callable[[], Tensor]) -> dict[str, float]:
    """Each block linear's relative fp8 error on its own bf16 input, measured while the bf16 model runs."""
    errors: dict[str, float] = {}

    def hook(name: str):
        def measure(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            errors[name] = relative_error(FP8Linear.from_linear(module)(inputs[0]), output)
        return measure

    handles = [layer.register_forward_hook(hook(name)) for name, layer in block_linears(model).items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return errors


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--depth", type=int, default=19 if cuda else 1, help="double blocks")
    parser.add_argument("--single-depth", type=int, default=38 if cuda else 1, help="single blocks")
    parser.add_argument("--tokens", default="512,4096,4096" if cuda else "64,256,256", help="text,target,reference (image counts in multiples of 64)")
    parser.add_argument("--iters", type=int, default=10 if cuda else 2, help="timed forwards per variant")
    parser.add_argument("--out", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = replace(preset("kontext-dev"), depth=args.depth, depth_single_blocks=args.single_depth)
    n_txt, n_target, n_ref = (int(n) for n in args.tokens.split(","))
    torch.manual_seed(0)
    with constructed_on(device, torch.bfloat16):
        model = FluxTransformer(config).eval().requires_grad_(False)

    generator = torch.Generator(device).manual_seed(1)
    ids = torch.cat([image_ids(n_target // 64, 64, 0, device), image_ids(n_ref // 64, 64, 1, device)])[None]
    img = torch.randn(1, n_target + n_ref, config.in_channels, device=device, generator=generator)
    txt = torch.randn(1, n_txt, config.context_in_dim, device=device, generator=generator)
    y = torch.randn(1, config.vec_in_dim, device=device, generator=generator)
    t, g = torch.tensor([0.7], device=device), torch.tensor([2.5], device=device)
    txt_ids = torch.zeros(1, n_txt, 3, device=device)

    def run() -> Tensor:
        with torch.no_grad():
            return model(img, ids, txt, txt_ids, t, y, g, num_target_tokens=n_target)

    layers = per_layer_errors(model, run)
    expected, bf16_bytes = run(), weight_bytes(model)
    bf16_s = median_seconds(run, device, warmup=1, iters=args.iters)
    quantize_fp8(model)
    got, fp8_bytes = run(), weight_bytes(model)
    fp8_s = median_seconds(run, device, warmup=1, iters=args.iters)
    worst = max(layers, key=layers.get)
    result = {
        **environment(device),
        "benchmark": "fp8_error",
        "blocks": f"{config.depth}+{config.depth_single_blocks}",
        "tokens": {"text": n_txt, "target": n_target, "reference": n_ref},
        "layers": len(layers),
        "layer_error_median": round(statistics.median(layers.values()), 5),
        "layer_error_max": round(layers[worst], 5),
        "layer_error_max_at": worst,
        "end_to_end_error": round(relative_error(got, expected), 5),
        "weights_gb": {"bf16": round(bf16_bytes / 1e9, 2), "fp8": round(fp8_bytes / 1e9, 2)},
        "forward_ms": {"bf16": round(bf16_s * 1e3, 1), "fp8": round(fp8_s * 1e3, 1)},
        "per_layer": {name: round(error, 5) for name, error in layers.items()},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "per_layer"}, indent=2))
    if args.out:
        save_result(args.out, result)


if __name__ == "__main__":
    main()
