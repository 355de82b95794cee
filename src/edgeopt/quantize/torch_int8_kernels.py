"""torch's quantized CPU kernels, computed on the codes the way they compute them.

Each function takes quantized tensors and returns the kernel's result dequantized, so a
torch.ao reference model can call it between its quantize/dequantize pairs
(:func:`edgeopt.quantize.int8_rounding.match_int8_rounding`) and round exactly as the
int8 model does. Each one is checked code for code against the kernel it mirrors
(tests/quantize/test_divergence.py, test_torch_int8_kernels.py), on x86 (AVX-512 VNNI).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def int8_global_avg_pool(q: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Global average pool of a quantized NCHW tensor as torch's quantized CPU kernel computes
    it, dequantized. Its two paths round differently: on a channels-last input (the int8
    convs' outputs) code = zp + round((sum(codes) - zp * n) * f32(1 / n)), on a contiguous
    one (a requantized float op's output) code = round(sum(codes) * f32(1 / n)); both in
    float32, half to even.

    Example:
        >>> q = torch.quantize_per_tensor(torch.tensor([[[[0.0, 0.1], [0.1, 0.1]]]]), 0.1, 0, torch.quint8)
        >>> round(float(int8_global_avg_pool(q)), 4)  # mean 0.75 LSB -> 1 LSB
        0.1
    """
    f32 = torch.float32
    kh, kw = q.shape[-2], q.shape[-1]
    zp = q.q_zero_point()
    total = q.int_repr().to(torch.int64).sum((-2, -1), keepdim=True)
    if channels_last:
        code = torch.round((total - zp * kh * kw).to(f32) * (torch.tensor(1.0, dtype=f32) / (kh * kw))) + zp
    else:
        code = torch.round(total.to(f32) * ((torch.tensor(1.0, dtype=f32) / kh) / kw))
    return (code.clamp(0, 255) - zp) * q.q_scale()


def int8_mean(q: torch.Tensor, dims: Any, keepdim: bool = False, channels_last: bool = True) -> torch.Tensor:
    """``q.mean(dims)`` of a quantized tensor as torch's quantized CPU kernel computes it,
    dequantized; the result keeps ``q``'s scale and zero point. Its two paths: a contiguous
    input averaged over its innermost dims gives code = round(f32(sum(codes)) / n), half to
    even; any other (the channels-last int8 conv outputs) is dequantized *in its own
    layout*, averaged in float and quantized again, so ties round as the float sum in
    channels-last order lands them (the reference's NCHW sum lands some the other way).

    Example:
        >>> q = torch.quantize_per_tensor(torch.tensor([[[[0.0, 0.1], [0.1, 0.1]]]]), 0.1, 0, torch.quint8)
        >>> round(float(int8_mean(q, (2, 3), channels_last=False)), 4)  # 0.75 LSB -> 1 LSB
        0.1
    """
    nd = q.dim()
    dims = sorted({int(d) % nd for d in ([dims] if isinstance(dims, int) else dims)})
    scale, zp = q.q_scale(), q.q_zero_point()
    cl = channels_last and nd == 4
    if not cl and dims == list(range(nd - len(dims), nd)):
        n = math.prod(q.shape[d] for d in dims)
        total = q.int_repr().to(torch.int64).sum(dims, keepdim=True)
        code = torch.round(total.to(torch.float32) / n)
        out = (code - zp) * scale
    else:
        src = q.contiguous(memory_format=torch.channels_last) if cl else q.contiguous()
        m = src.dequantize().mean(dims, keepdim=True)
        out = torch.quantize_per_tensor(m, scale, zp, q.dtype).dequantize()
    return out if keepdim else out.squeeze(dims)


#: lanes of the AVX2 quantized cat kernel (the CPU dispatch uses AVX2 for it even on AVX-512
#: CPUs): 32 uint8 channels per vector, then blocks of 8, then one by one
_CAT_LANES = (32, 8)


def _requantize_cat_input(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The uint8 codes of one channels-last cat input requantized to the output's grid, as
    the kernel computes them per pixel: the vectorized channels dequantize with one fused
    multiply-add ``code * s + (-zp * s)`` and multiply by ``f32(1 / scale)``; the channels
    left over dequantize as ``(code - zp) * s`` and multiply by ``1 / f32(scale)``."""
    f32 = torch.float32
    c = q.int_repr().to(torch.int64)
    s32 = torch.tensor(q.q_scale(), dtype=f32)
    zp = q.q_zero_point()
    channels = c.shape[1]
    wide, narrow = _CAT_LANES
    vec = channels // wide * wide
    if channels - vec >= narrow:
        vec += (channels - vec) // narrow * narrow
    premul = s32 * torch.tensor(-zp, dtype=f32)
    # fma: the exact c*s + premul (exact in float64: at most 33 significant bits) rounded once
    fused = (c.to(torch.float64) * float(s32) + float(premul)).to(f32)
    plain = (c - zp).to(f32) * s32
    inv_vec = torch.tensor(1.0 / scale, dtype=torch.float64).to(f32)
    inv_one = torch.tensor(1.0, dtype=f32) / torch.tensor(scale, dtype=f32)
    lane = (torch.arange(channels) < vec).view(1, channels, *([1] * (c.dim() - 2)))
    code = torch.round(torch.where(lane, fused * inv_vec, plain * inv_one)) + zero_point
    return code.clamp(0, 255)


def int8_cat(qs: list[torch.Tensor], dim: int = 0, channels_last: bool = True) -> torch.Tensor:
    """``torch.cat`` of quantized tensors as torch's quantized CPU kernel computes it,
    dequantized. The output takes the first input's scale and zero point (torch.ao's int8
    graph calls the plain ``torch.cat``); an input on another grid is requantized: along
    channels of channels-last 4-D inputs with the kernel's own arithmetic (see
    ``_requantize_cat_input``), otherwise dequantized, concatenated and quantized.

    Example:
        >>> a = torch.quantize_per_tensor(torch.ones(1, 1, 1, 1), 0.5, 0, torch.quint8)
        >>> b = torch.quantize_per_tensor(torch.full((1, 1, 1, 1), 0.75), 0.25, 0, torch.quint8)
        >>> int8_cat([a, b], 1).flatten().tolist()  # 0.75 on a 0.5 grid: 1.5 LSB -> 2 (half to even)
        [1.0, 1.0]
    """
    first = qs[0]
    scale, zp = first.q_scale(), first.q_zero_point()
    d = dim % first.dim()
    if channels_last and first.dim() == 4 and d == 1:
        parts = [q.int_repr().to(torch.float32)
                 if (q.q_scale() == scale and q.q_zero_point() == zp) else _requantize_cat_input(q, scale, zp)
                 for q in qs]
        code = torch.cat(parts, 1)
    else:
        code = torch.quantize_per_tensor(torch.cat([q.dequantize() for q in qs], d), scale, zp,
                                         first.dtype).int_repr().to(torch.float32)
    return (code - zp) * scale


def int8_mul(a: torch.Tensor, b: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``a * b`` of two quantized tensors as torch's quantized ``mul`` kernel computes it
    (the integer product times one float32 multiplier, rounded half to even, clamped to
    uint8), dequantized with ``scale``/``zero_point``.

    Example:
        >>> a = torch.quantize_per_tensor(torch.tensor([0.5]), 1 / 256, 0, torch.quint8)
        >>> b = torch.quantize_per_tensor(torch.tensor([3.0]), 0.1, 0, torch.quint8)
        >>> float(int8_mul(a, b, 0.1, 0))  # 1.5 / 0.1 = 15 codes
        1.5
    """
    f32 = torch.float32
    mult = (torch.tensor(a.q_scale(), dtype=f32) * torch.tensor(b.q_scale(), dtype=f32)
            * (torch.tensor(1.0, dtype=f32) / torch.tensor(scale, dtype=f32)))
    c = ((a.int_repr().to(torch.int32) - a.q_zero_point()) * (b.int_repr().to(torch.int32) - b.q_zero_point()))
    code = (torch.round(c.to(f32) * mult) + zero_point).clamp(0, 255)
    return (code - zero_point) * scale
