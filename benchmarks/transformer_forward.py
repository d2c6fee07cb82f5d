"""One transformer forward, ours vs diffusers' FluxTransformer2DModel with the same random weights.

    python -m benchmarks.transformer_forward            # CUDA: the 12B model, 1024² target + 1024² reference
    python -m benchmarks.transformer_forward --depth 1 --single-depth 1 --target 256 --reference 256

Without CUDA the defaults shrink to the 12B widths with one block of each kind at 256² so a CPU finishes.
Reports median ms per forward, achieved TFLOP/s and its fraction of the measured matmul ceiling.
"""

import argparse
import json
from dataclasses import replace

import torch
from diffusers import FluxTransformer2DModel

from benchmarks.common import environment, matmul_ceiling_tflops, median_seconds, save_result
from model.config import TransformerConfig, preset
from model.demo import constructed_on
from model.sampling import image_ids
from model.weights import StateDict, build_transformer

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def forward_flops(c: TransformerConfig, txt: int, target: int, reference: int) -> float:
    """Matmul FLOPs of one forward: 12·C² weights per token per block (either kind), attention 4·L²·C."""
    tokens = txt + target + reference
    blocks = c.depth + c.depth_single_blocks
    per_block = 2 * tokens * 12 * c.hidden_size**2 + 4 * tokens**2 * c.hidden_size
    embed = 2 * (target + reference) * c.in_channels * c.hidden_size + 2 * txt * c.context_in_dim * c.hidden_size
    return blocks * per_block + embed + 2 * target * c.hidden_size * c.in_channels


def random_models(config: TransformerConfig, device: torch.device, dtype: torch.dtype):
    """diffusers' model with its own random init, built in place on the device, and ours with the same weights."""
    with constructed_on(device, dtype):
        reference = FluxTransformer2DModel(**config.to_diffusers()).eval().requires_grad_(False)
    return reference, build_transformer([StateDict(reference.state_dict())], config, device, dtype)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if cuda else "float32")
    parser.add_argument("--depth", type=int, help="double blocks (default: 19 on CUDA, 1 on CPU)")
    parser.add_argument("--single-depth", type=int, help="single blocks (default: 38 on CUDA, 1 on CPU)")
    parser.add_argument("--target", type=int, default=1024 if cuda else 256, help="square target side, px")
    parser.add_argument("--reference", type=int, default=1024 if cuda else 256, help="reference side, px; 0 for none")
    parser.add_argument("--text-tokens", type=int, default=512 if cuda else 64)
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1)
    parser.add_argument("--iters", type=int, default=10 if cuda else 3)
    parser.add_argument("--out", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    config = replace(
        preset("kontext-dev"),
        depth=args.depth if args.depth is not None else (19 if cuda else 1),
        depth_single_blocks=args.single_depth if args.single_depth is not None else (38 if cuda else 1),
    )
    reference_model, ours = random_models(config, device, dtype)

    grid_t, grid_r = args.target // 16, args.reference // 16
    ids = [image_ids(grid_t, grid_t, 0, device)] + ([image_ids(grid_r, grid_r, 1, device)] if grid_r else [])
    img_ids = torch.cat(ids)
    target, reference = grid_t**2, grid_r**2
    generator = torch.Generator(device).manual_seed(0)
    img = torch.randn(1, target + reference, 64, device=device, dtype=dtype, generator=generator)
    txt = torch.randn(1, args.text_tokens, 4096, device=device, dtype=dtype, generator=generator)
    y = torch.randn(1, 768, device=device, dtype=dtype, generator=generator)
    t, g = torch.tensor([0.7], device=device), torch.tensor([2.5], device=device)
    txt_ids = torch.zeros(args.text_tokens, 3, device=device)

    def run_diffusers() -> torch.Tensor:
        return reference_model(
            hidden_states=img, encoder_hidden_states=txt, pooled_projections=y, timestep=t, guidance=g,
            img_ids=img_ids, txt_ids=txt_ids, return_dict=False,
        )[0][:, :target]

    def run_ours() -> torch.Tensor:
        return ours(img, img_ids[None], txt, txt_ids[None], t, y, g, num_target_tokens=target)

    with torch.no_grad():
        expected, got = run_diffusers().float(), run_ours().float()
        error = ((got - expected).norm() / expected.norm()).item()
        diffusers_s = median_seconds(run_diffusers, device, args.warmup, args.iters)
        ours_s = median_seconds(run_ours, device, args.warmup, args.iters)
    flops = forward_flops(config, args.text_tokens, target, reference)
    ceiling = matmul_ceiling_tflops(device, dtype)
    result = {
        **environment(device),
        "benchmark": "transformer_forward",
        "dtype": args.dtype,
        "blocks": f"{config.depth}+{config.depth_single_blocks}",
        "tokens": {"text": args.text_tokens, "target": target, "reference": reference},
        "ours_ms": round(ours_s * 1e3, 2),
        "diffusers_ms": round(diffusers_s * 1e3, 2),
        "speedup": round(diffusers_s / ours_s, 3),
        "tflop_per_forward": round(flops / 1e12, 3),
        "ours_tflops": round(flops / ours_s / 1e12, 2),
        "matmul_ceiling_tflops": round(ceiling, 2),
        "fraction_of_ceiling": round(flops / ours_s / 1e12 / ceiling, 3),
        "relative_error_vs_diffusers": error,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        save_result(args.out, result)


if __name__ == "__main__":
    main()
