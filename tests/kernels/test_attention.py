"""Every attention backend against the plain-torch reference."""

import pytest
import torch

from kernels import attention, attention_backend, available_attention_backends


def qkv(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 3, 37, 16, generator=generator).to(dtype) for _ in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize("backend", available_attention_backends())
def test_backend_matches_math_reference(backend: str) -> None:
    q, k, v = qkv()
    with attention_backend("math"):
        expected = attention(q, k, v)
    with attention_backend(backend):
        out = attention(q, k, v)
    assert out.shape == (2, 37, 3 * 16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_math_reference_is_softmax_attention() -> None:
    q, k, v = qkv()
    weights = torch.softmax(torch.einsum("bhld,bhmd->bhlm", q, k) / 4.0, dim=-1)
    expected = torch.einsum("bhlm,bhmd->blhd", weights, v).reshape(2, 37, 48)
    with attention_backend("math"):
        torch.testing.assert_close(attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_refused_and_switch_restores() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        with attention_backend("flash9"):
            pass
    q, k, v = qkv()
    with attention_backend("math"):
        pass
    torch.testing.assert_close(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v)
                               .transpose(1, 2).reshape(2, 37, 48))
