"""The whole transformer on the Triton kernels against the torch references (fp32; the interpreter without CUDA)."""

import pytest
import torch

from kernels import available_fused_backends, fused_backend
from model.config import preset
from model.sampling import image_ids
from model.transformer import FluxTransformer

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif("triton" not in available_fused_backends(), reason="needs triton")
def test_transformer_on_triton_kernels_matches_the_torch_path() -> None:
    config = preset("tiny")
    torch.manual_seed(0)
    model = FluxTransformer(config).to(DEVICE).eval()
    with torch.no_grad():
        for param in model.parameters():  # norm scales and biases random too
            param.normal_(0.0 if param.dim() > 1 else 1.0, 0.3)
    ids = torch.cat([image_ids(3, 5, 0), image_ids(4, 3, 1)]).to(DEVICE)
    inputs = dict(
        img=torch.randn(2, len(ids), config.in_channels, device=DEVICE), img_ids=ids.expand(2, -1, -1),
        txt=torch.randn(2, 7, config.context_in_dim, device=DEVICE), txt_ids=torch.zeros(2, 7, 3, device=DEVICE),
        timesteps=torch.tensor([0.9, 0.2], device=DEVICE), y=torch.randn(2, config.vec_in_dim, device=DEVICE),
        guidance=torch.tensor([2.5, 3.5], device=DEVICE), num_target_tokens=15,
    )
    with torch.no_grad():
        expected = model(**inputs)
        with fused_backend("triton"):
            got = model(**inputs)
    assert got.shape == (2, 15, config.in_channels)
    # Stated tolerance: fp32 throughout, so only the order of the sums differs.
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5
