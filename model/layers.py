"""Building blocks of the FLUX transformer, with BFL's parameter names so its checkpoints load as they are.

Shapes: B batch, L tokens, H heads, D head dim, C hidden size (3072 for the 12B model).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import attention, gated_residual, gated_residual_norm_modulate, norm_modulate, qk_norm_rope
from kernels.fp8 import FP8Linear


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of t [B] (already scaled to 0..1000), cos half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_frequencies(ids: Tensor, axes_dim: tuple[int, ...], theta: int) -> Tensor:
    """Rotation matrices [B, 1, L, D/2, 2, 2] (fp32) for position ids [B, L, n_axes].

    Each axis i rotates its own axes_dim[i] channels; pairs are interleaved (x[2j], x[2j+1]).
    Angles are computed in float64 so that large positions keep their precision.
    """
    blocks = []
    for axis, dim in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles = ids[..., axis].to(torch.float64)[..., None] * omega  # [B, L, dim/2]
        cos, sin = torch.cos(angles), torch.sin(angles)
        blocks.append(torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angles.shape, 2, 2))
    return torch.cat(blocks, dim=-3).unsqueeze(1).float()


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """The learned scale of a q or k RMS norm; the norm runs fused with RoPE (`kernels.qk_norm_rope`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))


class QKNorm(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)


def linear_features(layer: nn.Linear | FP8Linear, x: Tensor, features: slice) -> Tensor:
    """`layer(x)[..., features]`, computing only those output features."""
    if isinstance(layer, FP8Linear):
        return layer(x, features)
    return F.linear(x, layer.weight[features], None if layer.bias is None else layer.bias[features])


class SelfAttention(nn.Module):
    """The per-stream attention weights of a double block; the attention itself runs on the joint sequence."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


@dataclass
class ModulationOut:
    shift: Tensor  # [B, 1, C]
    scale: Tensor
    gate: Tensor


class Modulation(nn.Module):
    """adaLN-Zero: shift, scale and gate (twice for double blocks) from the conditioning vector."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec: Tensor) -> list[ModulationOut]:
        chunks = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return [ModulationOut(*chunks[i : i + 3]) for i in range(0, self.multiplier, 3)]


def _mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(approximate="tanh"), nn.Linear(hidden_dim, dim))


class DoubleStreamBlock(nn.Module):
    """Separate weights for image and text tokens, one joint attention over [text | image]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_dim: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = _mlp(hidden_size, mlp_hidden_dim)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_mlp = _mlp(hidden_size, mlp_hidden_dim)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        n_txt = txt.shape[1]
        img_q, img_k, img_v = self._qkv(self.img_attn, norm_modulate(img, img_mod1.shift, img_mod1.scale),
                                        pe[:, :, n_txt:])
        txt_q, txt_k, txt_v = self._qkv(self.txt_attn, norm_modulate(txt, txt_mod1.shift, txt_mod1.scale),
                                        pe[:, :, :n_txt])
        attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                         torch.cat((txt_v, img_v), dim=2))
        img, img_mlp_in = gated_residual_norm_modulate(img, img_mod1.gate, self.img_attn.proj(attn[:, n_txt:]),
                                                       img_mod2.shift, img_mod2.scale)
        img = gated_residual(img, img_mod2.gate, self.img_mlp(img_mlp_in))
        txt, txt_mlp_in = gated_residual_norm_modulate(txt, txt_mod1.gate, self.txt_attn.proj(attn[:, :n_txt]),
                                                       txt_mod2.shift, txt_mod2.scale)
        txt = gated_residual(txt, txt_mod2.gate, self.txt_mlp(txt_mlp_in))
        return img, txt

    def _qkv(self, attn: SelfAttention, x: Tensor, pe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q and k normalized and rotated, and v, each [B, H, L, D]."""
        norm = attn.norm
        return qk_norm_rope(attn.qkv(x), norm.query_norm.scale, norm.key_norm.scale, pe, self.num_heads)


class SingleStreamBlock(nn.Module):
    """One weight set for all tokens; attention and MLP run in parallel from one fused input projection."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_dim: int):
        super().__init__()
        self.hidden_size, self.num_heads, self.mlp_hidden_dim = hidden_size, num_heads, mlp_hidden_dim
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """The block's output for rows start:end of x; every row is still attended to.

        The last block asks for the target rows only: the other rows' queries, MLP and output projection are
        never computed, since the final layer discards them (the same values, less work). Plain ints rather
        than a slice, so that torch.compile treats them as sizes instead of constants to guard on.
        """
        (mod,) = self.modulation(vec)
        h = norm_modulate(x, mod.shift, mod.scale)
        rows = slice(start, end)
        if start == 0 and end is None:
            qkv, mlp = self.linear1(h).split([3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        else:
            qkv = linear_features(self.linear1, h, slice(0, 3 * self.hidden_size))
            mlp = linear_features(self.linear1, h[:, rows], slice(3 * self.hidden_size, None))
        q, k, v = qk_norm_rope(qkv, self.norm.query_norm.scale, self.norm.key_norm.scale, pe, self.num_heads)
        out = self.linear2(torch.cat((attention(q[:, :, rows], k, v), self.mlp_act(mlp)), dim=2))
        return gated_residual(x[:, rows], mod.gate, out)


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(norm_modulate(x, shift, scale))
