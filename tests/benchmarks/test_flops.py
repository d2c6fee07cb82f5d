"""The FLOP count behind every TFLOP/s we report, against the anchors in model-notes §2.1."""

import pytest

from benchmarks.transformer_forward import forward_flops
from model.config import preset


@pytest.mark.parametrize(
    "txt,target,reference,tflop",
    [(512, 4096, 4096, 165.5), (512, 4096, 0, 74.4), (512, 1024, 4096, 94.9)],
)
def test_forward_flops_match_the_published_anchors(txt: int, target: int, reference: int, tflop: float) -> None:
    assert forward_flops(preset("kontext-dev"), txt, target, reference) / 1e12 == pytest.approx(tflop, rel=0.005)
