"""Building blocks of the FLUX transformer, with BFL's parameter names so its checkpoints load as they are.

Shapes: B batch, L tokens, H heads, D head dim, C hidden size (3072 for the 12B model).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import attention


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


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate q or k [B, H, L, D] by `rope_frequencies` output, in fp32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    rotated = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return rotated.reshape(x.shape).type_as(x)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm computed in fp32, cast back, then scaled (BFL's order of operations)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
        return normed.to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """[B, L, 3·H·D] laid out (q | k | v), heads inside each → three [B, H, L, D]."""
    batch, length, _ = qkv.shape
    q, k, v = qkv.view(batch, length, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


def linear_features(layer: nn.Module, x: Tensor, features: slice) -> Tensor:
    """`layer(x)[..., features]`, computing only those output features when the layer is a plain nn.Linear."""
    if type(layer) is nn.Linear:
        return F.linear(x, layer.weight[features], None if layer.bias is None else layer.bias[features])
    return layer(x)[..., features]


def rope_attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    return attention(apply_rope(q, pe), apply_rope(k, pe), v)


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

    def modulate(self, x: Tensor) -> Tensor:
        return (1 + self.scale) * x + self.shift


class Modulation(nn.Module):
    """adaLN-Zero: shift, scale and gate (twice for double blocks) from the conditioning vector."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec: Tensor) -> list[ModulationOut]:
        chunks = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return [ModulationOut(*chunks[i : i + 3]) for i in range(0, self.multiplier, 3)]


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def _mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(approximate="tanh"), nn.Linear(hidden_dim, dim))


class DoubleStreamBlock(nn.Module):
    """Separate weights for image and text tokens, one joint attention over [text | image]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_dim: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = _layer_norm(hidden_size)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_norm2 = _layer_norm(hidden_size)
        self.img_mlp = _mlp(hidden_size, mlp_hidden_dim)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = _layer_norm(hidden_size)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_norm2 = _layer_norm(hidden_size)
        self.txt_mlp = _mlp(hidden_size, mlp_hidden_dim)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self._qkv(self.img_attn, img_mod1.modulate(self.img_norm1(img)))
        txt_q, txt_k, txt_v = self._qkv(self.txt_attn, txt_mod1.modulate(self.txt_norm1(txt)))
        attn = rope_attention(
            torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), torch.cat((txt_v, img_v), dim=2), pe
        )
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(img_mod2.modulate(self.img_norm2(img)))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(txt_mod2.modulate(self.txt_norm2(txt)))
        return img, txt

    def _qkv(self, attn: SelfAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = split_heads(attn.qkv(x), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v


class SingleStreamBlock(nn.Module):
    """One weight set for all tokens; attention and MLP run in parallel from one fused input projection."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_dim: int):
        super().__init__()
        self.hidden_size, self.num_heads, self.mlp_hidden_dim = hidden_size, num_heads, mlp_hidden_dim
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = _layer_norm(hidden_size)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """The block's output for rows start:end of x; every row is still attended to.

        The last block asks for the target rows only: the other rows' queries, MLP and output projection are
        never computed, since the final layer discards them (the same values, less work). Plain ints rather
        than a slice, so that torch.compile treats them as sizes instead of constants to guard on.
        """
        (mod,) = self.modulation(vec)
        h = mod.modulate(self.pre_norm(x))
        rows = slice(start, end)
        if start == 0 and end is None:
            qkv, mlp = self.linear1(h).split([3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        else:
            qkv = linear_features(self.linear1, h, slice(0, 3 * self.hidden_size))
            mlp = linear_features(self.linear1, h[:, rows], slice(3 * self.hidden_size, None))
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(apply_rope(q[:, :, rows], pe[:, :, rows]), apply_rope(k, pe), v)
        out = self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))
        return x[:, rows] + mod.gate * out


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = _layer_norm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])
