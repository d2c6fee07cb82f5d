"""`--quantize fp8`: the transformer blocks' linear layers as rowwise-scaled float8 GEMMs (kernels/fp8.py).

The block linears hold 8.6 of the 11.9 B parameters and nearly all the FLOPs. The embedders, the modulation
layers (3.2 B) and the final layer stay in the model dtype: they run on one row per sample (little speed to
gain), and their outputs scale every token of a block, so their error would reach everything. The 12B model
takes 15.2 GB this way instead of 23.8 GB.
"""

from torch import nn

from kernels.fp8 import FP8Linear
from model.transformer import FluxTransformer

DOUBLE_BLOCK_LINEARS = tuple(f"{stream}_{layer}" for stream in ("img", "txt")
                             for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2"))
SINGLE_BLOCK_LINEARS = ("linear1", "linear2")


def quantize_fp8(transformer: FluxTransformer) -> int:
    """Replace the block linears by FP8Linear in place, one at a time, on whatever device the model is on
    (peak memory: the model plus one layer). Returns how many were replaced; a layer whose sizes float8
    GEMMs cannot take (not multiples of 16) stays as it is."""
    replaced = 0
    blocks = [(block, DOUBLE_BLOCK_LINEARS) for block in transformer.double_blocks]
    blocks += [(block, SINGLE_BLOCK_LINEARS) for block in transformer.single_blocks]
    for block, paths in blocks:
        for path in paths:
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            layer = getattr(parent, name)
            if isinstance(layer, nn.Linear) and FP8Linear.supports(layer):
                setattr(parent, name, FP8Linear.from_linear(layer))
                replaced += 1
    return replaced
