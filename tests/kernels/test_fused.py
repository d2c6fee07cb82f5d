"""The fused elementwise ops: the torch references are the model's code, the Triton kernels match them.

Without CUDA the kernels run in Triton's interpreter (tests/kernels/conftest.py), so the shapes stay small;
odd sizes (L 37, C 96, D 24) exercise the masks. Tolerances: in fp32 the kernels match the reference to 1e-5
(rtol and atol). In bf16 each output must lie within one bf16 rounding of the fp32 computation from the same
inputs (rtol 2⁻⁸ on a GPU, which rounds to nearest; 2⁻⁷ in the interpreter, which truncates; atol 1e-4), and
its largest error must be no worse than the torch bf16 path's own (which rounds after every op) plus half a
bf16 ulp of the largest output value.
"""

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from kernels import (
    available_fused_backends,
    fused_backend,
    gated_residual,
    gated_residual_norm_modulate,
    norm_modulate,
    qk_norm_rope,
)
from kernels.fused import set_fused_backend
from model.layers import rope_frequencies

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
B, L, C, H, D = 2, 37, 96, 3, 24
AXES = (4, 10, 10)  # RoPE channels per position axis, summing to D
# One rounding to bf16: half an ulp on a GPU (round to nearest), a whole one in the interpreter (truncation).
BF16_ROUNDING = 2**-8 if DEVICE.type == "cuda" else 2**-7

needs_triton = pytest.mark.skipif("triton" not in available_fused_backends(), reason="no triton")


def tensors(dtype: torch.dtype, batch: int = B, length: int = L, channels: int = C, heads: int = H,
            head_dim: int = D, axes: tuple[int, ...] = AXES, extra: int = 40) -> dict[str, Tensor]:
    """Activations, modulation chunks of one tensor (as the model has them), a qkv slice of a wider tensor."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).to(DEVICE, dtype)

    shift, scale, gate = randn(batch, 1, 3 * channels).chunk(3, dim=-1)
    wide = randn(batch, length, 3 * heads * head_dim + extra)  # the single block's linear1 output, qkv | mlp
    ids = torch.randint(0, 64, (batch, length, len(axes)), generator=generator).to(DEVICE)
    return {
        "x": randn(batch, length, channels), "y": randn(batch, length, channels),
        "shift": shift, "scale": scale, "gate": gate, "wide": wide, "qkv": wide[..., : 3 * heads * head_dim],
        "q_scale": randn(head_dim), "k_scale": randn(head_dim), "freqs": rope_frequencies(ids, axes, 10_000),
    }


def run(backend: str, fn: Callable[..., object], *args: object) -> tuple[Tensor, ...]:
    with fused_backend(backend):
        out = fn(*args)
    return out if isinstance(out, tuple) else (out,)


def fp32(args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, Tensor) else a for a in args)


def assert_fused_matches(got: Tensor, reference: Tensor, exact: Tensor, reference_exact: Tensor | None = None
                         ) -> None:
    """`got` (triton) against `reference` (torch, same dtype) and `exact` (fp32 from the same inputs).

    `reference_exact` is the reference's own exact value where its inputs differ (its own rounded residual).
    """
    assert got.dtype == reference.dtype and got.shape == reference.shape and got.is_contiguous()
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
        return
    reference_exact = exact if reference_exact is None else reference_exact
    fused_error = (got.float() - exact).abs().max().item()
    torch_error = (reference.float() - reference_exact).abs().max().item()
    torch.testing.assert_close(got.float(), exact, rtol=BF16_ROUNDING, atol=1e-4)  # rounded once
    slack = 2**-8 * exact.abs().max().item()  # half a bf16 ulp at the largest value
    assert fused_error <= torch_error + slack, (fused_error, torch_error, slack)


# The references are bit for bit the model's code before the fusion (model/layers.py at a053138), kept here.


def model_modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """`ModulationOut.modulate(nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)(x))`."""
    return (1 + scale) * nn.LayerNorm(x.shape[-1], elementwise_affine=False, eps=1e-6)(x) + shift


def model_qk_norm_rope(qkv: Tensor, q_scale: Tensor, k_scale: Tensor, freqs: Tensor, num_heads: int
                       ) -> tuple[Tensor, ...]:
    """`split_heads`, `QKNorm` (RMSNorm in fp32, cast back, times the scale, `.to(v)`), then `apply_rope`."""

    def rms_norm(x: Tensor, scale: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * scale

    def apply_rope(x: Tensor) -> Tensor:
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
        return (freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]).reshape(x.shape).type_as(x)

    batch, length, _ = qkv.shape
    q, k, v = qkv.view(batch, length, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = rms_norm(q, q_scale).to(v), rms_norm(k, k_scale).to(v)
    return apply_rope(q), apply_rope(k), v


@DTYPES
def test_norm_references_are_the_models_code(dtype: torch.dtype) -> None:
    t = tensors(dtype)
    expected = model_modulate(t["x"], t["shift"], t["scale"])
    assert torch.equal(run("torch", norm_modulate, t["x"], t["shift"], t["scale"])[0], expected)
    args = (t["x"], t["gate"], t["y"], t["shift"], t["scale"])
    residual, out = run("torch", gated_residual_norm_modulate, *args)
    assert torch.equal(residual, t["x"] + t["gate"] * t["y"])
    assert torch.equal(run("torch", gated_residual, t["x"], t["gate"], t["y"])[0], residual)
    assert torch.equal(out, model_modulate(residual, t["shift"], t["scale"]))


@DTYPES
def test_qk_norm_rope_reference_is_the_models_code(dtype: torch.dtype) -> None:
    t = tensors(dtype)
    args = (t["qkv"], t["q_scale"], t["k_scale"], t["freqs"], H)
    for got, expected in zip(run("torch", qk_norm_rope, *args), model_qk_norm_rope(*args), strict=True):
        assert torch.equal(got, expected)


# The Triton kernels against the references.


@needs_triton
@DTYPES
def test_triton_norm_modulate(dtype: torch.dtype) -> None:
    t = tensors(dtype)
    args = (t["x"], t["shift"], t["scale"])
    (exact,) = run("torch", norm_modulate, *fp32(args))
    (got,), (reference,) = run("triton", norm_modulate, *args), run("torch", norm_modulate, *args)
    assert_fused_matches(got, reference, exact)


@needs_triton
@DTYPES
def test_triton_gated_residual(dtype: torch.dtype) -> None:
    t = tensors(dtype)
    args = (t["x"], t["gate"], t["y"])
    (exact,) = run("torch", gated_residual, *fp32(args))
    (got,), (reference,) = run("triton", gated_residual, *args), run("torch", gated_residual, *args)
    assert_fused_matches(got, reference, exact)


@needs_triton
@DTYPES
def test_triton_gated_residual_norm_modulate(dtype: torch.dtype) -> None:
    check_gated_residual_norm_modulate(tensors(dtype))


def check_gated_residual_norm_modulate(t: dict[str, Tensor]) -> None:
    args = (t["x"], t["gate"], t["y"], t["shift"], t["scale"])
    residual, out = run("triton", gated_residual_norm_modulate, *args)
    torch_residual, torch_out = run("torch", gated_residual_norm_modulate, *args)
    (exact_residual,) = run("torch", gated_residual, *fp32(args[:3]))
    assert_fused_matches(residual, torch_residual, exact_residual)
    # Each path normalizes its own rounded residual: the exact second output is computed from that.
    modulation = fp32((t["shift"], t["scale"]))
    (exact,) = run("torch", norm_modulate, residual.float(), *modulation)
    (torch_exact,) = run("torch", norm_modulate, torch_residual.float(), *modulation)
    assert_fused_matches(out, torch_out, exact, torch_exact)
    assert torch.equal(out, run("triton", norm_modulate, residual, t["shift"], t["scale"])[0])


@needs_triton
@DTYPES
@pytest.mark.parametrize("layout", ["contiguous", "slice"])
def test_triton_qk_norm_rope(dtype: torch.dtype, layout: str) -> None:
    t = tensors(dtype)
    qkv = t["qkv"] if layout == "slice" else t["qkv"].contiguous()
    assert qkv.is_contiguous() == (layout == "contiguous")
    args = (qkv, t["q_scale"], t["k_scale"], t["freqs"], H)
    exact = run("torch", qk_norm_rope, *fp32(args))
    got, reference = run("triton", qk_norm_rope, *args), run("torch", qk_norm_rope, *args)
    for a, b, e in zip(got, reference, exact, strict=True):
        assert_fused_matches(a, b, e)  # each output contiguous
    assert torch.equal(got[2], reference[2]) and not reference[2].is_contiguous()  # v: a copy of the view


@needs_triton
def test_triton_broadcasts_a_batch_of_one() -> None:
    t = tensors(torch.float32)
    shift, scale, gate, freqs = t["shift"][:1], t["scale"][:1], t["gate"][:1], t["freqs"][:1]
    cases = [
        (norm_modulate, (t["x"], shift, scale)),
        (gated_residual_norm_modulate, (t["x"], gate, t["y"], shift, scale)),
        (qk_norm_rope, (t["qkv"], t["q_scale"], t["k_scale"], freqs, H)),
    ]
    for fn, args in cases:
        for got, expected in zip(run("triton", fn, *args), run("torch", fn, *args), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_triton
def test_triton_runs_inside_torch_compile() -> None:
    t = tensors(torch.float32)

    def block(x: Tensor, qkv: Tensor) -> tuple[Tensor, ...]:
        h = norm_modulate(x, t["shift"], t["scale"])
        residual, h = gated_residual_norm_modulate(x, t["gate"], h * 2, t["shift"], t["scale"])
        q, k, v = qk_norm_rope(qkv, t["q_scale"], t["k_scale"], t["freqs"], H)
        return gated_residual(residual, t["gate"], h), q + 1, k, v

    expected = run("torch", block, t["x"], t["qkv"])
    # Compiled GPU kernels go into the graph; the interpreter's run outside it (a graph break).
    compiled = torch.compile(block, backend="inductor" if DEVICE.type == "cuda" else "eager", dynamic=True)
    for got, reference in zip(run("triton", compiled, t["x"], t["qkv"]), expected, strict=True):
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_refused_and_the_switch_restores_the_previous_one() -> None:
    with pytest.raises(ValueError, match="unknown or unavailable fused backend"), fused_backend("cuda9"):
        pass
    previous = set_fused_backend("torch")
    try:
        for outer in available_fused_backends():
            for inner in available_fused_backends():
                with fused_backend(outer):
                    with pytest.raises(RuntimeError), fused_backend(inner):
                        raise RuntimeError  # restored on the way out of an error too
                    assert set_fused_backend(outer) == outer
                assert set_fused_backend("torch") == "torch"
    finally:
        set_fused_backend(previous)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_triton
def test_triton_at_the_12b_shapes_on_cuda() -> None:
    """One block's worth at a 1024² edit: 8704 tokens (512 text, 2 × 4096 image), C 3072, 24 heads of 128."""
    t = tensors(torch.bfloat16, batch=1, length=8704, channels=3072, heads=24, head_dim=128,
                axes=(16, 56, 56), extra=12288)
    for fn, args in [
        (norm_modulate, (t["x"], t["shift"], t["scale"])),
        (gated_residual, (t["x"], t["gate"], t["y"])),
        (qk_norm_rope, (t["qkv"], t["q_scale"], t["k_scale"], t["freqs"], 24)),
    ]:
        exact = run("torch", fn, *fp32(args))
        for got, reference, e in zip(run("triton", fn, *args), run("torch", fn, *args), exact, strict=True):
            assert_fused_matches(got, reference, e)
    check_gated_residual_norm_modulate(t)
