"""Float8 rowwise linears: quantization error bounds, `_scaled_mm` against the plain-torch reference."""

import pytest
import torch
import torch.nn.functional as F

from kernels.fp8 import FP8, FP8Linear, fp8_linear, fp8_linear_reference, quantize_rowwise

SUBNORMAL_STEP = 2.0**-9  # e4m3's spacing below its smallest normal (2⁻⁶), in units of the row scale


def test_rowwise_quantization_keeps_three_mantissa_bits() -> None:
    t = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 64)[:, None]
    values, scale = quantize_rowwise(t)
    assert values.dtype == FP8 and scale.shape == (64, 1)
    assert torch.equal(values.float().abs().amax(dim=1), torch.full((64,), 448.0))  # each row uses the full range
    # Stated bound: round to nearest with 3 mantissa bits is off by at most 2⁻⁴ relative, plus half a subnormal step.
    error = (values.float() * scale - t).abs()
    assert (error <= 2.0**-4 * t.abs() + 0.5 * SUBNORMAL_STEP * scale).all()


def test_zero_rows_stay_zero_with_a_finite_scale() -> None:
    values, scale = quantize_rowwise(torch.zeros(3, 32))
    assert torch.isfinite(scale).all() and (values.float() == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_mm_matches_the_reference_and_stays_near_the_exact_product(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 11, 64, generator=generator).to(dtype)  # batch dims [B, L, K]
    linear = torch.nn.Linear(64, 48).to(dtype)
    layer = FP8Linear.from_linear(linear)
    out = fp8_linear(x, layer.weight, layer.weight_scale, layer.bias)
    reference = fp8_linear_reference(x, layer.weight, layer.weight_scale, layer.bias)
    assert out.shape == (3, 11, 48) and out.dtype == dtype
    # The same quantized product: only the summation order (and one output rounding in bf16) differs.
    tight = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-7, atol=1e-2)
    torch.testing.assert_close(out, reference, **tight)
    exact = F.linear(x.float(), linear.weight.float(), linear.bias.float())
    # Stated bound: both operands carry ≤ 2⁻⁴ relative error; on random data the output is off by about 2-3 %.
    assert ((out.float() - exact).norm() / exact.norm()).item() < 0.04


def test_a_slice_of_output_features_is_the_same_as_slicing_the_output() -> None:
    layer = FP8Linear.from_linear(torch.nn.Linear(32, 80))
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(layer(x, slice(16, 64)), layer(x)[..., 16:64], rtol=1e-6, atol=1e-6)


def test_quantized_layer_state_round_trips() -> None:
    layer = FP8Linear.from_linear(torch.nn.Linear(32, 48))
    state = layer.state_dict()
    assert state["weight"].dtype == FP8 and set(state) == {"weight", "weight_scale", "bias"}
    copy = FP8Linear.from_linear(torch.nn.Linear(32, 48))
    copy.load_state_dict(state)
    x = torch.randn(4, 32)
    assert torch.equal(copy(x), layer(x))
