"""Every attention backend against the plain-torch reference."""

import pytest
import torch

from kernels import attention, attention_backend, available_attention_backends


def qkv(dtype: torch.dtype = torch.float32, head_dim: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 3, 37, head_dim, generator=generator).to(dtype) for _ in range(3))  # type: ignore[return-value]


GPU_ONLY = {"cudnn", "flash3"}  # fused GPU kernels: bf16 on CUDA only


@pytest.mark.parametrize("backend", available_attention_backends())
def test_backend_matches_math_reference(backend: str) -> None:
    if backend in GPU_ONLY:  # the reference in fp32 from the same bf16 inputs; bf16 output rounding allowed
        q, k, v = (t.cuda() for t in qkv(torch.bfloat16, head_dim=128))  # FLUX's head size
        tolerance = dict(rtol=1.6e-2, atol=1e-2)
    else:
        q, k, v = qkv()
        tolerance = dict(rtol=1e-5, atol=1e-5)
    with attention_backend("math"):
        expected = attention(q.float(), k.float(), v.float())
    with attention_backend(backend):
        out = attention(q, k, v)
    assert out.shape == (2, 37, 3 * q.shape[-1])
    torch.testing.assert_close(out.float(), expected, **tolerance)


def test_math_reference_is_softmax_attention() -> None:
    q, k, v = qkv()
    weights = torch.softmax(torch.einsum("bhld,bhmd->bhlm", q, k) / 4.0, dim=-1)
    expected = torch.einsum("bhlm,bhmd->blhd", weights, v).reshape(2, 37, 48)
    with attention_backend("math"):
        torch.testing.assert_close(attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_refused_and_switch_restores() -> None:
    with pytest.raises(ValueError, match="unknown or unavailable attention backend"):
        with attention_backend("flash9"):
            pass
    q, k, v = qkv()
    with attention_backend("math"):
        pass
    torch.testing.assert_close(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v)
                               .transpose(1, 2).reshape(2, 37, 48))
