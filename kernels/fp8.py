"""Float8 (e4m3) linear layers with rowwise scales: `torch._scaled_mm`, and a plain-torch reference beside it.

Weights are quantized once with one scale per output row; activations are quantized per token at run time, so
one outlier token does not cost the others their precision. The product is accumulated in fp32 and scaled on
the way out. Where `_scaled_mm` cannot run rowwise (CUDA before Hopper), the reference computes the same
quantized product by dequantizing: the same numbers, the memory saving kept, none of the speed.
"""

import torch
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MIN_SCALE = 1e-12  # an all-zero row keeps a finite scale


def quantize_rowwise(t: Tensor) -> tuple[Tensor, Tensor]:
    """t [rows, K] → (t / scale in float8 e4m3, fp32 scales [rows, 1]) with scale = amax(|row|) / 448."""
    t32 = t.float()
    scale = (t32.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    return (t32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def scaled_mm_supported(device: torch.device) -> bool:
    """Rowwise-scaled float8 GEMMs: on the CPU, and on CUDA from Hopper (sm_90) on."""
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0))


def fp8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., K] @ dequantized(weight [N, K] fp8, weight_scale [1, N]).T + bias, in x's dtype.

    x is quantized per row on the fly; the GEMM multiplies the float8 operands and applies both scales.
    """
    rows = x.reshape(-1, x.shape[-1])
    x_fp8, x_scale = quantize_rowwise(rows)
    if scaled_mm_supported(x.device):
        out = torch._scaled_mm(x_fp8, weight.t(), scale_a=x_scale, scale_b=weight_scale, bias=bias,
                               out_dtype=x.dtype)
    else:
        out = _dequantized_product(x_fp8, x_scale, weight, weight_scale, bias, x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def fp8_linear_reference(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The same quantized product in plain fp32 torch: dequantize both operands, multiply, add the bias."""
    x_fp8, x_scale = quantize_rowwise(x.reshape(-1, x.shape[-1]))
    out = _dequantized_product(x_fp8, x_scale, weight, weight_scale, bias, x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _dequantized_product(x_fp8: Tensor, x_scale: Tensor, weight: Tensor, weight_scale: Tensor,
                         bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    out = (x_fp8.float() * x_scale) @ (weight.float() * weight_scale.t()).t()
    return (out if bias is None else out + bias.float()).to(dtype)


class FP8Linear(nn.Module):
    """An nn.Linear whose weight is stored in float8 with rowwise scales; runs `fp8_linear`."""

    def __init__(self, weight: Tensor, weight_scale: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FP8Linear":
        weight, scale = quantize_rowwise(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight, scale.t().contiguous(), bias)

    @staticmethod
    def supports(linear: nn.Linear) -> bool:
        """float8 GEMMs need both dimensions in multiples of 16."""
        return linear.in_features % 16 == 0 and linear.out_features % 16 == 0

    def forward(self, x: Tensor, features: slice = slice(None)) -> Tensor:
        """The layer's output, or only its output `features` (rows of the weight) when asked."""
        bias = None if self.bias is None else self.bias[features]
        return fp8_linear(x, self.weight[features], self.weight_scale[:, features], bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3fn rowwise"

