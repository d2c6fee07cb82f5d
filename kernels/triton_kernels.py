"""Triton kernels behind kernels/fused.py, with their launch wrappers; imported only when that backend runs.

Every kernel loads in fp32, computes in fp32 and rounds once when it stores. Inputs may be strided views
whose last dimension is contiguous (a slice of a wider projection output needs no copy); outputs are new
contiguous tensors. Without CUDA, set TRITON_INTERPRET=1 before importing this module to run on CPU.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

EPS = tl.constexpr(1e-6)  # of the LayerNorms and the RMSNorms; a compile-time constant of every kernel


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def _rows(t: Tensor) -> Tensor:
    """`t` with a contiguous last dimension (the only layout requirement of the kernels)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _per_batch(t: Tensor) -> tuple[Tensor, int]:
    """A [B or 1, 1, C] modulation tensor and its batch stride (0 when one row serves the whole batch)."""
    t = _rows(t)
    return t, (0 if t.shape[0] == 1 else t.stride(0))


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    """tl.sum, but with this module's combine function: tl.sum is itself a jit function, interpreted or not as
    decided when triton.language was imported, which may precede TRITON_INTERPRET=1 (as in the test suite)."""
    return tl.reduce(x, axis, _add)


@triton.jit
def _modulated_norm(x, b, offs, mask, shift_ptr, scale_ptr, stride_shift, stride_scale, n_cols):
    """(1 + scale[b]) · LayerNorm(x) + shift[b] for one fp32 row held in registers."""
    mean = _sum(x, 0) / n_cols
    centered = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(_sum(centered * centered, 0) / n_cols + EPS)
    shift = tl.load(shift_ptr + b * stride_shift + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + b * stride_scale + offs, mask=mask, other=0.0).to(tl.float32)
    return centered * rstd * (1.0 + scale) + shift


@triton.jit
def _norm_modulate_kernel(
    x_ptr, shift_ptr, scale_ptr, out_ptr, length, n_cols,
    stride_xb, stride_xl, stride_shift, stride_scale, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b, pos = row // length, row % length
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(x_ptr + b * stride_xb + pos * stride_xl + offs, mask=mask, other=0.0).to(tl.float32)
    out = _modulated_norm(x, b, offs, mask, shift_ptr, scale_ptr, stride_shift, stride_scale, n_cols)
    tl.store(out_ptr + row * n_cols + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_kernel(
    x_ptr, gate_ptr, y_ptr, out_ptr, length, n_cols,
    stride_xb, stride_xl, stride_yb, stride_yl, stride_gate, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b, pos = row // length, row % length
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(x_ptr + b * stride_xb + pos * stride_xl + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * stride_yb + pos * stride_yl + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + b * stride_gate + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + offs, (x + gate * y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_norm_modulate_kernel(
    x_ptr, gate_ptr, y_ptr, shift_ptr, scale_ptr, res_ptr, out_ptr, length, n_cols,
    stride_xb, stride_xl, stride_yb, stride_yl, stride_gate, stride_shift, stride_scale, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b, pos = row // length, row % length
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(x_ptr + b * stride_xb + pos * stride_xl + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * stride_yb + pos * stride_yl + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + b * stride_gate + offs, mask=mask, other=0.0).to(tl.float32)
    # The norm reads the residual as stored: the second output is exactly norm_modulate(first output).
    residual = (x + gate * y).to(res_ptr.dtype.element_ty)
    tl.store(res_ptr + row * n_cols + offs, residual, mask=mask)
    out = _modulated_norm(
        residual.to(tl.float32), b, offs, mask, shift_ptr, scale_ptr, stride_shift, stride_scale, n_cols
    )
    tl.store(out_ptr + row * n_cols + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_rope(src, heads, half, mask, w_even, w_odd, f00, f01, f10, f11, head_dim):
    """RMS-normalize [BLOCK_H, BLOCK_HALF] heads (even, odd channels apart), scale, then rotate the pairs."""
    even = tl.load(src + heads * head_dim + 2 * half, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(src + heads * head_dim + 2 * half + 1, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((_sum(even * even, 1) + _sum(odd * odd, 1)) / head_dim + EPS)
    even = even * rstd[:, None] * w_even
    odd = odd * rstd[:, None] * w_odd
    return f00 * even + f01 * odd, f10 * even + f11 * odd


@triton.jit
def _qk_norm_rope_kernel(
    qkv_ptr, q_scale_ptr, k_scale_ptr, freqs_ptr, q_ptr, k_ptr, v_ptr, length, num_heads, head_dim,
    stride_b, stride_l, stride_fb, stride_fl, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b, pos = row // length, row % length
    heads = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None]
    half = tl.arange(0, BLOCK_HALF)[None, :]
    pairs = 2 * half < head_dim
    mask = (heads < num_heads) & pairs

    # freqs[b, 0, pos, j, r, c] (fp32), shared by every head of this token.
    f = freqs_ptr + b * stride_fb + pos * stride_fl + 4 * half
    f00 = tl.load(f, mask=pairs, other=0.0)
    f01 = tl.load(f + 1, mask=pairs, other=0.0)
    f10 = tl.load(f + 2, mask=pairs, other=0.0)
    f11 = tl.load(f + 3, mask=pairs, other=0.0)

    src = qkv_ptr + b * stride_b + pos * stride_l
    width = num_heads * head_dim
    dst = ((b * num_heads + heads) * length + pos) * head_dim + 2 * half  # into [B, H, L, D]

    qw_even = tl.load(q_scale_ptr + 2 * half, mask=pairs, other=0.0).to(tl.float32)
    qw_odd = tl.load(q_scale_ptr + 2 * half + 1, mask=pairs, other=0.0).to(tl.float32)
    even, odd = _rms_rope(src, heads, half, mask, qw_even, qw_odd, f00, f01, f10, f11, head_dim)
    tl.store(q_ptr + dst, even.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(q_ptr + dst + 1, odd.to(q_ptr.dtype.element_ty), mask=mask)

    kw_even = tl.load(k_scale_ptr + 2 * half, mask=pairs, other=0.0).to(tl.float32)
    kw_odd = tl.load(k_scale_ptr + 2 * half + 1, mask=pairs, other=0.0).to(tl.float32)
    even, odd = _rms_rope(src + width, heads, half, mask, kw_even, kw_odd, f00, f01, f10, f11, head_dim)
    tl.store(k_ptr + dst, even.to(k_ptr.dtype.element_ty), mask=mask)
    tl.store(k_ptr + dst + 1, odd.to(k_ptr.dtype.element_ty), mask=mask)

    channels = tl.arange(0, 2 * BLOCK_HALF)[None, :]
    v_mask = (heads < num_heads) & (channels < head_dim)
    v = tl.load(src + 2 * width + heads * head_dim + channels, mask=v_mask)
    tl.store(v_ptr + ((b * num_heads + heads) * length + pos) * head_dim + channels, v, mask=v_mask)


def _promoted(*tensors: Tensor) -> torch.dtype:
    """The dtype torch's elementwise arithmetic would give these tensors (what the reference returns)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def norm_modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    x = _rows(x)
    batch, length, n_cols = x.shape
    out = torch.empty(batch, length, n_cols, device=x.device, dtype=_promoted(x, shift, scale))
    (shift, stride_shift), (scale, stride_scale) = _per_batch(shift), _per_batch(scale)
    block = triton.next_power_of_2(n_cols)
    _norm_modulate_kernel[(batch * length,)](
        x, shift, scale, out, length, n_cols, x.stride(0), x.stride(1), stride_shift, stride_scale,
        BLOCK=block, num_warps=_warps(block),
    )
    return out


def gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    x, y = _rows(x), _rows(y)
    batch, length, n_cols = x.shape
    out = torch.empty(batch, length, n_cols, device=x.device, dtype=_promoted(x, gate, y))
    gate, stride_gate = _per_batch(gate)
    block = min(triton.next_power_of_2(n_cols), 4096)
    _gated_residual_kernel[(batch * length, triton.cdiv(n_cols, block))](
        x, gate, y, out, length, n_cols, x.stride(0), x.stride(1), y.stride(0), y.stride(1), stride_gate,
        BLOCK=block, num_warps=_warps(block),
    )
    return out


def gated_residual_norm_modulate(
    x: Tensor, gate: Tensor, y: Tensor, shift: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    x, y = _rows(x), _rows(y)
    batch, length, n_cols = x.shape
    residual = torch.empty(batch, length, n_cols, device=x.device, dtype=_promoted(x, gate, y))
    out = torch.empty(batch, length, n_cols, device=x.device, dtype=_promoted(residual, shift, scale))
    (gate, stride_gate), (shift, stride_shift), (scale, stride_scale) = map(_per_batch, (gate, shift, scale))
    block = triton.next_power_of_2(n_cols)
    _gated_residual_norm_modulate_kernel[(batch * length,)](
        x, gate, y, shift, scale, residual, out, length, n_cols, x.stride(0), x.stride(1), y.stride(0),
        y.stride(1), stride_gate, stride_shift, stride_scale, BLOCK=block, num_warps=_warps(block),
    )
    return residual, out


def qk_norm_rope(
    qkv: Tensor, q_scale: Tensor, k_scale: Tensor, freqs: Tensor, num_heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    qkv = _rows(qkv)
    batch, length, _ = qkv.shape
    head_dim = freqs.shape[-3] * 2
    shape = (batch, num_heads, length, head_dim)
    q, k, v = (torch.empty(shape, device=qkv.device, dtype=qkv.dtype) for _ in "qkv")
    if freqs.stride()[-3:] != (4, 2, 1):  # each token's rotation matrices must be contiguous
        freqs = freqs.contiguous()
    block_half = triton.next_power_of_2(head_dim // 2)
    block_h = min(triton.next_power_of_2(num_heads), max(1, 512 // block_half))
    _qk_norm_rope_kernel[(batch * length, triton.cdiv(num_heads, block_h))](
        qkv, q_scale.contiguous(), k_scale.contiguous(), freqs, q, k, v, length, num_heads, head_dim,
        qkv.stride(0), qkv.stride(1), 0 if freqs.shape[0] == 1 else freqs.stride(0), freqs.stride(2),
        BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=_warps(block_h * block_half),
    )
    return q, k, v


if isinstance(_norm_modulate_kernel, InterpretedFunction):
    # torch.compile captures compiled Triton kernels into its graphs, but would trace into the interpreter's
    # numpy code: on CPU the wrappers stay out of the graph instead.
    norm_modulate, gated_residual, gated_residual_norm_modulate, qk_norm_rope = map(
        torch.compiler.disable, (norm_modulate, gated_residual, gated_residual_norm_modulate, qk_norm_rope)
    )
