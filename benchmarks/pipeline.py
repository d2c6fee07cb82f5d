"""End to end, prompt (and reference image) to PIL image: our pipeline vs diffusers' `FluxKontextPipeline`.

    python -m benchmarks.pipeline                          # CUDA: random 12B weights, full-size T5 / CLIP / VAE
    python -m benchmarks.pipeline --modes bf16,bf16+compile --go-fast --out pipeline-h100-bf16.json
    python -m benchmarks.pipeline --modes fp8,fp8+compile --text-encoder-device cpu --out pipeline-h100-24gb.json

Both pipelines share the text encoders, the VAE and the transformer weights (ours is converted from diffusers'
random model), in one process. Diffusers runs first with its own transformer; that transformer is then freed,
so each side's peak memory counts one transformer. Without CUDA the demo model runs at 256² on the CPU.
Cases: `t2i-1024` (text to image, 1024²) and `kontext-edit-1024` (1024² reference → 1024² output).
"""

import argparse
import gc
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from benchmarks.common import environment, matmul_ceiling_tflops, save_result
from benchmarks.transformer_forward import forward_flops
from model.compiled import compile_pipeline
from model.config import TransformerConfig
from model.demo import FULL, TINY, random_pipeline
from model.encoders import Autoencoder, TextEncoder
from model.pipeline import GenerationRequest, KontextPipeline
from model.quantize import quantize_fp8
from model.sampling import TimeShift
from model.step_skipping import computed_steps
from model.weights import StateDict, build_transformer

PROMPT = "a small wooden cabin on a snowy mountain, warm light in the windows"
TEXT_TOKENS = 512


@dataclass(frozen=True)
class Case:
    name: str
    side: int  # output side, px
    reference: bool  # Kontext edit with a reference of the same size


def cases(side: int) -> list[Case]:
    label = "1024" if side == 1024 else str(side)
    return [Case(f"kontext-edit-{label}", side, True), Case(f"t2i-{label}", side, False)]


def reference_image(side: int) -> Image.Image:
    generator = torch.Generator().manual_seed(1)
    pixels = (torch.rand(side, side, 3, generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


@dataclass
class Timing:
    seconds: float  # median
    peak_gib: float  # peak allocated on the GPU; 0 off CUDA
    image: Image.Image  # the last run's output (every run uses the same seed)


def timed_runs(run: Callable[[], Image.Image], device: torch.device, warmup: int, iters: int) -> Timing:
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        image = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return Timing(statistics.median(times), peak, image)


def psnr_db(image: Image.Image, reference: Image.Image) -> float | None:
    """Peak signal-to-noise ratio of 8-bit images in dB (None when identical): how far a fast path strays."""
    a, b = (np.asarray(i, dtype=np.float64) for i in (image, reference))
    mse = float(((a - b) ** 2).mean())
    return None if mse == 0 else round(10 * math.log10(255**2 / mse), 1)


def ours_from(reference, device: torch.device, dtype: torch.dtype) -> KontextPipeline:
    """Our pipeline over diffusers' components: its encoders and VAE as they are, its transformer converted."""
    config = TransformerConfig.from_diffusers(dict(reference.transformer.config))
    transformer = build_transformer([StateDict(reference.transformer.state_dict())], config, device, dtype)
    return KontextPipeline(
        transformer,
        TextEncoder(reference.tokenizer, reference.text_encoder, reference.tokenizer_2, reference.text_encoder_2),
        Autoencoder(reference.vae),
        TimeShift.from_diffusers(dict(reference.scheduler.config)),
    )


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--side", type=int, default=1024 if cuda else 256, help="output (and reference) side, px")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--modes", default="bf16" if cuda else "float32",
                        help="comma-separated: bf16 | float32 | fp8, each optionally +compile (applied in order)")
    parser.add_argument("--go-fast", action="store_true", help="also time each mode with go_fast on")
    parser.add_argument("--text-encoder-device", help="cpu: our T5 and CLIP run on the CPU (the 24 GB memory mode)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out", help="result file name under benchmarks/results/ (a JSON list)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reference = random_pipeline(FULL if device.type == "cuda" else TINY, seed=0, device=device, dtype=dtype)
    reference.set_progress_bar_config(disable=True)
    image = reference_image(args.side)
    env = environment(device)

    def diffusers_run(case: Case) -> Callable[[], Image.Image]:
        return lambda: reference(
            prompt=PROMPT, image=image if case.reference else None, width=case.side, height=case.side,
            max_area=case.side**2, num_inference_steps=args.steps, guidance_scale=2.5,
            generator=torch.Generator("cpu").manual_seed(0), _auto_resize=False,  # the reference is `side`² already
        ).images[0]

    with torch.no_grad():
        baseline = {case.name: timed_runs(diffusers_run(case), device, args.warmup, args.iters)
                    for case in cases(args.side)}
    ours = ours_from(reference, device, dtype)
    reference.transformer = None  # from here on only our transformer holds GPU memory
    if args.text_encoder_device:
        ours.text_encoder.clip.to(args.text_encoder_device)
        ours.text_encoder.t5.to(args.text_encoder_device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    ceiling = matmul_ceiling_tflops(device, dtype)
    results, quantized, compiled = [], False, False
    for mode in args.modes.split(","):  # in order: quantizing and compiling change `ours` for good
        if mode.startswith("fp8") and not quantized:
            quantize_fp8(ours.transformer)
            quantized = True
        if mode.endswith("+compile") and not compiled:
            compile_pipeline(ours)
            compiled = True
        for go_fast in (False, True) if args.go_fast else (False,):
            for case in cases(args.side):
                request = GenerationRequest(PROMPT, image=image if case.reference else None, width=case.side,
                                            height=case.side, auto_resize=False, num_inference_steps=args.steps,
                                            seed=0, go_fast=go_fast)
                timing = timed_runs(lambda r=request: ours.generate(r).image, device, args.warmup, args.iters)
                base = baseline[case.name]
                tokens = (case.side // 16) ** 2
                passes = sum(computed_steps(args.steps, go_fast))
                flops = passes * forward_flops(ours.transformer.config, TEXT_TOKENS, tokens,
                                               tokens if case.reference else 0)
                floor = flops / (ceiling * 1e12)
                results.append({
                    **env, "case": case.name, "steps": args.steps, "batch": 1,
                    "mode": mode + ("+go_fast" if go_fast else "")
                    + (f"+text-encoders-{args.text_encoder_device}" if args.text_encoder_device else ""),
                    "ours_s": round(timing.seconds, 3), "diffusers_s": round(base.seconds, 3),
                    "ratio": round(timing.seconds / base.seconds, 3),
                    "peak_mem_gb": round(timing.peak_gib, 2) if device.type == "cuda" else None,
                    "diffusers_peak_mem_gb": round(base.peak_gib, 2) if device.type == "cuda" else None,
                    "psnr_vs_diffusers_db": psnr_db(timing.image, base.image),
                    "transformer_tflop": round(flops / 1e12, 1),
                    "matmul_ceiling_tflops": round(ceiling, 1),
                    "compute_floor_s": round(floor, 3),
                    "ours_vs_floor": round(timing.seconds / floor, 2),
                })
                print(json.dumps(results[-1]))
    print(markdown_table(results))
    if args.out:
        save_result(args.out, results).with_suffix(".md").write_text(markdown_table(results) + "\n")


def markdown_table(results: list[dict]) -> str:
    rows = ["| case | mode | ours (s) | diffusers (s) | ratio | floor (s) | ours / floor | peak GiB | "
            "PSNR vs diffusers |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        psnr = "identical" if r["psnr_vs_diffusers_db"] is None else f"{r['psnr_vs_diffusers_db']} dB"
        rows.append(f"| {r['case']} | {r['mode']} | {r['ours_s']} | {r['diffusers_s']} | {r['ratio']} | "
                    f"{r['compute_floor_s']} | {r['ours_vs_floor']} | {r['peak_mem_gb'] or '–'} | "
                    f"{psnr} |")
    first = results[0]
    rows.append(f"\n{first['device']}, torch {first['torch']}, commit {first['commit']}, {first['steps']} steps, "
                f"batch 1. Floor: the transformer's matmul FLOPs at the measured matmul rate "
                f"({first['matmul_ceiling_tflops']} TFLOP/s).")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
