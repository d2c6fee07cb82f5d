"""torch.compile for the transformer blocks and the VAE, without recompiles across image sizes.

Regional compilation: each block is compiled on its own, and blocks of one kind share a graph (the 19 double
blocks one, the 38 single blocks another, and the last single block, which keeps only the target rows, a third).
That compiles several times faster than the whole model and runs as fast. Sizes are dynamic, so every pair
of preferred resolutions uses the same graphs; only batch 1 vs larger batches differ (size 1 is always
specialized). With `cuda_graphs`, the compiled blocks replay CUDA graphs recorded once per shape.
"""

import time

import torch
from PIL import Image

from model.pipeline import GenerationRequest, KontextPipeline


def compile_pipeline(pipeline: KontextPipeline, cuda_graphs: bool = False) -> None:
    """Compile `pipeline`'s transformer blocks and VAE in place; the first call of each shape compiles."""
    mode = "reduce-overhead" if cuda_graphs else None
    # Without this, sizes that happen to be equal on the first call (a square image) share one symbol, and the
    # first unequal pair recompiles.
    torch.fx.experimental._config.use_duck_shape = False
    transformer = pipeline.transformer
    for block in [*transformer.double_blocks, *transformer.single_blocks]:
        block.compile(dynamic=True, mode=mode)
    pipeline.autoencoder.vae.encoder.compile(dynamic=True, mode=mode)
    pipeline.autoencoder.vae.decoder.compile(dynamic=True, mode=mode)
    if cuda_graphs:  # each forward is a new step: the previous step's graph outputs may be overwritten
        transformer.register_forward_pre_hook(lambda *_: torch.compiler.cudagraph_mark_step_begin())


def warm_up(pipeline: KontextPipeline, megapixels: float = 1.0) -> float:
    """Compile before serving: one short edit at the default size builds the graphs every size reuses.

    Batches of two or more compile their own graphs on first use. Returns the seconds it took.
    """
    start = time.perf_counter()
    reference = Image.new("RGB", (1024, 1024), (127, 127, 127))
    pipeline.generate(GenerationRequest("warm-up", image=reference, num_inference_steps=2, seed=0,
                                        megapixels=megapixels))
    return time.perf_counter() - start
