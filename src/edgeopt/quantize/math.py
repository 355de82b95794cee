"""The maths of int8 quantization, exposed for learners.

A quantized tensor stores each real value ``x`` as a small integer ``q`` plus two numbers,
the **scale** (the real value of one integer step) and the **zero point** (the integer
that stands for the real 0.0)::

    q  = clamp(round(x / scale) + zero_point, qmin, qmax)     # quantize
    x' = (q - zero_point) * scale                             # dequantize

``round`` is round-half-to-even (``torch.round``, ``numpy.rint``, ONNX QuantizeLinear).
Inside ``[(qmin - zp) * scale, (qmax - zp) * scale]`` the error ``|x' - x|`` is at most
``scale / 2``; outside it values are clipped to the nearest end.

**Why 0.0 must be exact.** Zero padding, ReLU outputs and pruned weights are all exactly
0, and a bias error on each of them would add up. Because the zero point is an integer in
``[qmin, qmax]``, ``x = 0`` quantizes to ``q = zero_point`` and dequantizes to exactly 0;
that is why every range is first widened to include 0.

**Symmetric or asymmetric.** Symmetric quantization fixes the zero point (0 for int8,
128 for uint8) and centres the range on 0: ``scale = max(|xmin|, |xmax|) / ((qmax - qmin)
/ 2)``, PyTorch's convention (int8: ``amax / 127.5``, narrow range: ``amax / 127``). It
suits weights, which are roughly centred on 0, and makes int8 matmuls cheaper.
Asymmetric quantization spends all ``qmax - qmin`` steps on ``[xmin, xmax]``:
``scale = (xmax - xmin) / (qmax - qmin)``, ``zero_point = round(qmin - xmin / scale)``;
it suits activations such as ReLU outputs, which are all >= 0.

All maths is float32 on the tensors' device; per-channel parameters are 1-D tensors
broadcast along ``axis`` (the channel dimension, e.g. 0 for a conv weight).
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgeopt.errors import ConfigError, NumericalError

TensorLike = Tensor | float | int  # a number is a per-tensor parameter
_DTYPES = {"int8": (torch.int8, -128, 127), "uint8": (torch.uint8, 0, 255)}
#: smallest scale choose_qparams returns for a non-zero range (PyTorch observers' floor)
_EPS = torch.finfo(torch.float32).eps
_KL_EPS = 1e-4  # smoothing of empty bins in the KL search (ONNX Runtime, MXNet)


def qrange(dtype: str = "int8", narrow_range: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a quantized dtype.

    Narrow range drops the lowest code, so the range is symmetric around the symmetric
    zero point (int8: ``[-127, 127]``, uint8: ``[1, 255]``), as TFLite int8 weights use.

    Example:
        >>> qrange("int8"), qrange("int8", narrow_range=True), qrange("uint8")
        ((-128, 127), (-127, 127), (0, 255))
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {', '.join(_DTYPES)}")
    _, qmin, qmax = _DTYPES[dtype]
    return (qmin + 1 if narrow_range else qmin), qmax


def choose_qparams(
    xmin: TensorLike,
    xmax: TensorLike,
    dtype: str = "int8",
    symmetric: bool = True,
    narrow_range: bool = False,
) -> tuple[Tensor, Tensor]:
    """Scale and zero point that represent ``[xmin, xmax]`` widened to include 0.

    The formulas are the module's (symmetric: PyTorch's ``amax / ((qmax - qmin) / 2)``, so
    int8 maps ``amax`` to 127.5, which rounds to 127: half a step off, like any value). A
    zero range (all zeros, e.g. a pruned channel) gets ``scale = 1.0`` as in ONNX Runtime;
    any other scale is floored at float32 eps (1.19e-7) as in PyTorch.

    Args:
        xmin: smallest observed value: a number (per tensor) or a 1-D tensor (per channel).
        xmax: largest observed value, the same shape as ``xmin``.
        dtype: ``"int8"`` or ``"uint8"``.
        symmetric: fix the zero point and centre the range on 0.
        narrow_range: use ``[qmin + 1, qmax]`` (see :func:`qrange`).

    Returns:
        ``(scale, zero_point)``: float32 and int64 tensors shaped like ``xmin``.

    Raises:
        ConfigError: on NaN or inf, ``xmin > xmax``, mismatched shapes or an unknown dtype.

    Example:
        >>> scale, zp = choose_qparams(-1.0, 2.0, dtype="uint8", symmetric=False)
        >>> round(scale.item(), 6), zp.item()
        (0.011765, 85)
        >>> round(choose_qparams(-1.0, 2.0)[0].item(), 6)  # int8 symmetric: 2 / 127.5
        0.015686
    """
    qmin, qmax = qrange(dtype, narrow_range)
    lo, hi = (torch.as_tensor(v).to(torch.float32) for v in (xmin, xmax))
    if lo.shape != hi.shape or lo.dim() > 1:
        raise ConfigError(f"xmin {tuple(lo.shape)} and xmax {tuple(hi.shape)} must be "
                          "the same shape: scalars or 1-D (one value per channel)")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ConfigError("choose_qparams: xmin/xmax are non-finite (NaN or inf): "
                          "the calibration data or the observed range is broken")
    if (lo > hi).any():
        raise ConfigError("choose_qparams: xmin must be <= xmax")
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # 0 must be representable
    if symmetric:
        width = torch.maximum(-lo, hi)  # amax
        scale = width / ((qmax - qmin) / 2)
    else:
        width = hi - lo
        scale = width / (qmax - qmin)
    scale = torch.where(width == 0, 1.0, torch.clamp(scale, min=_EPS))
    if not torch.isfinite(scale).all():
        raise ConfigError("choose_qparams: the range is too wide for float32 (non-finite scale)")
    if symmetric:
        zero_point = torch.full_like(scale, (qmin + qmax + 1) // 2, dtype=torch.int64)
    else:
        zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int64)
    return scale, zero_point


def _qparams(scale: TensorLike, zero_point: TensorLike, x: Tensor, axis: int | None,
             dtype: str | None = None) -> tuple[Tensor, Tensor]:
    """Checked float32 scale and zero point, shaped to broadcast along ``axis`` of ``x``."""
    s = torch.as_tensor(scale).to(device=x.device, dtype=torch.float32)
    z = torch.as_tensor(zero_point).to(x.device)
    if not (torch.isfinite(s) & (s > 0)).all():
        raise ConfigError("scale must be finite and > 0")
    if z.is_floating_point() and not torch.equal(z, torch.round(z)):
        raise ConfigError("zero_point must be an integer")
    if dtype is not None and ((z < qrange(dtype)[0]) | (z > qrange(dtype)[1])).any():
        raise ConfigError(f"zero_point must lie in {list(qrange(dtype))} for {dtype}")
    if axis is not None and not -x.dim() <= axis < x.dim():
        raise ConfigError(f"axis={axis} is out of range for a {x.dim()}-D tensor")
    out = []
    for name, p in (("scale", s), ("zero_point", z.to(torch.float32))):
        if p.numel() == 1:  # per tensor (also allowed with axis: the same for every channel)
            out.append(p.reshape(()))
            continue
        if axis is None:
            raise ConfigError(f"{name} has {p.numel()} values: pass axis= (the channel "
                              "dimension) for per-channel parameters")
        if p.dim() != 1 or p.numel() != x.shape[axis]:
            raise ConfigError(f"{name} has shape {tuple(p.shape)}, expected one value per "
                              f"channel of axis {axis}: ({x.shape[axis]},)")
        shape = [1] * x.dim()
        shape[axis] = -1
        out.append(p.reshape(shape))
    return out[0], out[1]


def quantize(x: Tensor, scale: TensorLike, zero_point: TensorLike, dtype: str = "int8",
             axis: int | None = None) -> Tensor:
    """``q = clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax)``.

    Args:
        x: real values (computed in float32).
        scale: a number or 0-d tensor, or a 1-D tensor (one per channel) with ``axis``.
        zero_point: an integer, or a 1-D integer tensor with ``axis``.
        dtype: ``"int8"`` or ``"uint8"``: the clamp range is the dtype's full range.
        axis: the channel dimension of ``x`` for per-channel parameters.

    Returns:
        An int8 or uint8 tensor shaped like ``x``.

    Raises:
        ConfigError: on a bad scale, zero point, axis or dtype.
        NumericalError: if ``x`` contains NaN (inf saturates to qmin/qmax).

    Example:
        >>> quantize(torch.tensor([-1.0, 0.0, 0.5, 3.0]), 0.01, 0).tolist()
        [-100, 0, 50, 127]
    """
    qmin, qmax = qrange(dtype)
    torch_dtype = _DTYPES[dtype][0]
    x = torch.as_tensor(x).to(torch.float32)
    if torch.isnan(x).any():
        raise NumericalError("quantize: x contains NaN")
    s, z = _qparams(scale, zero_point, x, axis, dtype)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch_dtype)


def dequantize(q: Tensor, scale: TensorLike, zero_point: TensorLike,
               axis: int | None = None) -> Tensor:
    """``x' = (q - zero_point) * scale`` in float32.

    Example:
        >>> q = torch.tensor([0, 128, 255], dtype=torch.uint8)
        >>> dequantize(q, 1 / 128, 128).tolist()
        [-1.0, 0.0, 0.9921875]
    """
    qf = torch.as_tensor(q).to(torch.float32)
    s, z = _qparams(scale, zero_point, qf, axis)
    return (qf - z) * s


def fake_quantize(x: Tensor, scale: TensorLike, zero_point: TensorLike, dtype: str = "int8",
                  axis: int | None = None) -> Tensor:
    """``dequantize(quantize(x))``: the float values an int8 model actually computes with.

    Example:
        >>> fake_quantize(torch.tensor([0.1, 0.26, 40.0]), 0.25, 0).tolist()  # 40 clips
        [0.0, 0.25, 31.75]
    """
    return dequantize(quantize(x, scale, zero_point, dtype, axis), scale, zero_point, axis)


def _values(x: Tensor, what: str) -> Tensor:
    """Observed values as float32; empty tensors and NaN/inf are errors, never a range."""
    x = torch.as_tensor(x).detach()
    if x.numel() == 0:
        raise ConfigError(f"{what}: no values (the tensor is empty)")
    if not torch.isfinite(x).all():
        raise NumericalError(f"{what}: the values contain NaN or inf")
    return x.to(torch.float32)


def minmax_range(x: Tensor, axis: int | None = None) -> tuple[Tensor, Tensor]:
    """The observed extremes: per tensor, or per channel of ``axis`` (other dims reduced).

    Example:
        >>> lo, hi = minmax_range(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), axis=0)
        >>> lo.tolist(), hi.tolist()
        ([-2.0, 3.0], [1.0, 4.0])
    """
    x = _values(x, "minmax_range")
    if axis is None:
        return torch.aminmax(x)
    if not -x.dim() <= axis < x.dim():
        raise ConfigError(f"axis={axis} is out of range for a {x.dim()}-D tensor")
    return torch.aminmax(x.movedim(axis, 0).reshape(x.shape[axis], -1), dim=1)


class Histogram:
    """Counts of values in ``num_bins`` equal bins, accumulated batch after batch.

    The bins cover ``[lo, lo + num_bins * width]``. When a batch falls outside, the grid
    grows to the left by whole bins and its width becomes an integer multiple ``k`` of
    the old one, so every old bin lies inside one new bin: re-binning merges counts and
    loses nothing. ``min``/``max`` are the exact extremes seen so far.

    Example:
        >>> h = Histogram(num_bins=4).update(torch.tensor([0.0, 1.0, 2.0, 4.0]))
        >>> h.counts.tolist(), h.edges.tolist()
        ([1, 1, 1, 1], [0.0, 1.0, 2.0, 3.0, 4.0])
        >>> h.update(torch.tensor([8.0])).counts.tolist(), h.edges.tolist()
        ([2, 2, 0, 1], [0.0, 2.0, 4.0, 6.0, 8.0])
    """

    def __init__(self, num_bins: int = 2048) -> None:
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ConfigError(f"num_bins={num_bins!r} must be a positive integer")
        self.num_bins = num_bins
        self.counts = torch.zeros(num_bins, dtype=torch.int64)
        self.min, self.max = float("inf"), float("-inf")
        self._lo, self._width = 0.0, 0.0  # width 0: every value seen so far is self.min

    @property
    def edges(self) -> Tensor:
        """The ``num_bins + 1`` bin edges (float64)."""
        return self._lo + torch.arange(self.num_bins + 1, dtype=torch.float64) * self._width

    @property
    def total(self) -> int:
        """Number of values seen."""
        return int(self.counts.sum())

    def update(self, x: Tensor) -> Histogram:
        """Add the values of ``x``; returns ``self``."""
        v = _values(x, "Histogram.update").flatten().cpu().to(torch.float64)
        lo, hi = (float(t) for t in torch.aminmax(v))
        n, end = self.num_bins, self._lo + self.num_bins * self._width
        if self.total == 0:
            self._lo, self._width = lo, (hi - lo) / n
        elif self._width == 0 and (lo < self._lo or hi > self._lo):
            old, self.counts = self.counts.sum(), torch.zeros(n, dtype=torch.int64)
            self._lo, self._width = min(lo, self._lo), (max(hi, self._lo) - min(lo, self._lo)) / n
            self.counts[self._bins(torch.tensor([self.min], dtype=torch.float64))] = old
        elif lo < self._lo or hi > end:
            a, b, w = min(lo, self._lo), max(hi, end), self._width
            m = max(0, int(-(-(self._lo - a) // w)))  # whole old bins added on the left
            new_lo = self._lo - m * w
            k = max(1, int(-(-(b - new_lo) // (n * w))))  # new width = k old widths
            while new_lo + n * k * w < b:  # float safety
                k += 1
            if m + k < 2**52:  # exact: old edges stay edges, k old bins merge into one
                index = torch.clamp((torch.arange(n) + m) // k, max=n - 1)
                self._lo, self._width = new_lo, k * w
            else:  # the old grid is negligibly narrow: each bin goes where its centre falls
                centres = self.edges[:-1] + w / 2
                self._lo, self._width = a, (b - a) / n
                index = self._bins(centres)
            self.counts = torch.zeros(n, dtype=torch.int64).index_add_(0, index, self.counts)
        self.counts += torch.bincount(self._bins(v), minlength=n)
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        return self

    def _bins(self, v: Tensor) -> Tensor:
        if self._width == 0:
            return torch.zeros(v.shape, dtype=torch.int64)
        idx = torch.floor((v - self._lo) / self._width)
        return torch.clamp(idx, 0, self.num_bins - 1).to(torch.int64)

    def _abs_counts(self, num_bins: int) -> tuple[Tensor, float]:
        """Histogram of ``|x|`` on ``[0, amax]`` in ``num_bins`` bins (float counts)."""
        amax = max(-self.min, self.max)
        if self._width == 0:
            counts = torch.zeros(num_bins, dtype=torch.float64)
            counts[-1] = self.total
            return counts, amax
        # counts below t (values spread uniformly inside a bin) minus those below -t
        t, cum = torch.linspace(0.0, amax, num_bins + 1, dtype=torch.float64), _cumsum0(self.counts)
        below = _interp(t, self.edges, cum) - _interp(-t, self.edges, cum)
        return torch.diff(below).clamp(min=0.0), amax


def _cumsum0(c: Tensor) -> Tensor:
    """Cumulative counts at the edges: ``[0, c0, c0 + c1, ...]`` (float64)."""
    return torch.cat([c.new_zeros(1), torch.cumsum(c, 0)]).to(torch.float64)


def _interp(t: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear ``fp(t)`` for increasing ``xp``, constant outside (``numpy.interp``)."""
    i = torch.searchsorted(xp, t, right=True).clamp(1, xp.numel() - 1)
    w = ((t - xp[i - 1]) / (xp[i] - xp[i - 1])).clamp(0.0, 1.0)
    return fp[i - 1] + w * (fp[i] - fp[i - 1])


def _hist_quantile(edges: Tensor, counts: Tensor, q: Tensor) -> Tensor:
    """Value below which a fraction ``q`` of the counts lies (inverse of the linear CDF)."""
    cum = _cumsum0(counts)
    target = q * cum[-1]
    i = torch.searchsorted(cum, target).clamp(1, cum.numel() - 1)
    c0, c1 = cum[i - 1], cum[i]
    frac = torch.where(c1 > c0, (target - c0) / (c1 - c0).clamp(min=1e-300), 0.0)
    return edges[i - 1] + frac * (edges[i] - edges[i - 1])


def percentile_range(x: Tensor | Histogram, percentile: float = 99.999,
                     symmetric: bool = False) -> tuple[Tensor, Tensor]:
    """Clip the tails: ``(the (100 - p) percentile, the p percentile)`` of the values.

    On a tensor this is ``numpy.percentile``'s default (linear interpolation between
    order statistics). On a :class:`Histogram` values are assumed uniform within a bin,
    so the result is within one bin width of the exact one. ``symmetric`` returns
    ``(-t, t)`` with ``t`` the p percentile of ``|x|``.

    Example:
        >>> x = torch.arange(101, dtype=torch.float32)
        >>> [v.item() for v in percentile_range(x, 90.0)]
        [10.0, 90.0]
    """
    if not 50.0 <= percentile <= 100.0:
        raise ConfigError(f"percentile={percentile} must be in [50, 100]")
    q = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0], dtype=torch.float64)
    if isinstance(x, Histogram):
        if x.total == 0:
            raise ConfigError("percentile_range: the histogram is empty")
        if symmetric:
            counts, amax = x._abs_counts(x.num_bins)
            edges = torch.linspace(0.0, amax, x.num_bins + 1, dtype=torch.float64)
            abs_min = 0.0 if x.min <= 0.0 <= x.max else min(abs(x.min), abs(x.max))
            lo_hi = _hist_quantile(edges, counts, q).clamp(abs_min, amax) if amax > 0 else q * 0
        elif x._width == 0:
            lo_hi = torch.tensor([x.min, x.max], dtype=torch.float64)
        else:
            lo_hi = _hist_quantile(x.edges, x.counts, q).clamp(x.min, x.max)
    else:
        v = _values(x, "percentile_range").flatten().to(torch.float64)
        v, q = torch.sort(v.abs() if symmetric else v).values, q.to(v.device)
        pos = q * (v.numel() - 1)
        i = torch.floor(pos).to(torch.int64).clamp(max=max(v.numel() - 2, 0))
        j = (i + 1).clamp(max=v.numel() - 1)
        lo_hi = v[i] + (pos - i) * (v[j] - v[i])
    lo, hi = lo_hi.to(torch.float32)
    return (-hi, hi) if symmetric else (lo, hi)


def entropy_range(x: Tensor | Histogram, num_bins: int = 2048,
                  num_quantized_bins: int = 128) -> tuple[Tensor, Tensor]:
    """KL-divergence (entropy) calibration, the TensorRT algorithm on ``|x|``.

    Build a ``num_bins`` histogram of ``|x|`` on ``[0, max|x|]``. For every candidate
    threshold bin ``i`` in ``[num_quantized_bins, num_bins]``: the reference ``P`` is
    ``hist[:i]`` with the outliers ``sum(hist[i:])`` added to its last bin; ``Q`` merges
    ``hist[:i]`` into ``num_quantized_bins`` groups (128: the int8 levels >= 0; the last
    group takes the remainder) and spreads each group's count evenly back over the bins
    where ``P`` is non-zero. Both are smoothed (empty bins get ``1e-4``, taken from the
    others) and the threshold is the upper edge of bin ``i`` with the smallest
    ``KL(P || Q)``: clipping a few outliers buys finer steps for everything else.

    Returns:
        ``(-t, t)``, or ``(0, t)`` when every value is >= 0.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(100_000, generator=g), torch.tensor([50.0])])
        >>> lo, hi = entropy_range(x)
        >>> 2.0 < hi.item() < 10.0, lo.item() == -hi.item()
        (True, True)
    """
    if num_bins < num_quantized_bins or num_quantized_bins < 1:
        raise ConfigError(f"num_bins={num_bins} must be >= num_quantized_bins="
                          f"{num_quantized_bins} >= 1")
    if isinstance(x, Histogram):
        if x.total == 0:
            raise ConfigError("entropy_range: the histogram is empty")
        counts, amax = x._abs_counts(num_bins)
        nonnegative = x.min >= 0
    else:
        v = _values(x, "entropy_range").flatten().to(torch.float64)
        nonnegative, a = bool(v.min() >= 0), v.abs()
        amax = float(a.max())
        if amax > 0:
            idx = torch.clamp(torch.floor(a / amax * num_bins), max=num_bins - 1).to(torch.int64)
            counts = torch.bincount(idx, minlength=num_bins).to(torch.float64)
    if amax == 0:
        zero = torch.tensor(0.0)
        return zero, zero.clone()
    t = torch.tensor(_kl_best_bin(counts.cpu(), num_quantized_bins) * amax / num_bins,
                     dtype=torch.float32)
    return (torch.zeros_like(t) if nonnegative else -t), t


def _smooth(d: Tensor, valid: Tensor) -> Tensor:
    zeros, nonzeros = (d == 0) & valid, (d != 0) & valid
    eps1 = _KL_EPS * zeros.sum(1, keepdim=True) / nonzeros.sum(1, keepdim=True).clamp(min=1)
    d = d + _KL_EPS * zeros - eps1 * nonzeros
    return d.clamp(min=1e-12)  # float counts (a folded Histogram) can dip below eps1


def _kl_best_bin(hist: Tensor, nq: int, chunk: int = 256) -> int:
    """The number of bins ``i`` whose range minimises KL(P || Q) (vectorised, by chunks)."""
    n = hist.numel()
    suffix = torch.flip(_cumsum0(torch.flip(hist, [0])), [0])  # suffix[i] = sum(hist[i:])
    best_kl, best_i = float("inf"), n
    for cand in torch.arange(nq, n + 1).split(chunk):
        c, width = cand[:, None], int(cand.max())
        j = torch.arange(width)[None, :]
        valid = j < c  # (C, width): bins inside the candidate range
        sliced = torch.where(valid, hist[:width], 0.0)
        p = sliced.clone()
        p[torch.arange(cand.numel()), cand - 1] += suffix[cand]  # outliers -> last bin
        nonzero = p != 0
        group = torch.where(valid, torch.clamp(j // (c // nq), max=nq - 1), nq)
        qsum = torch.zeros(cand.numel(), nq + 1, dtype=hist.dtype).scatter_add_(1, group, sliced)
        qnz = torch.zeros_like(qsum).scatter_add_(1, group, nonzero.to(hist.dtype))
        q = torch.where(nonzero, torch.gather(qsum / qnz.clamp(min=1), 1, group), 0.0)
        empty_q = (q.sum(1) == 0)  # everything was an outlier: no usable Q
        p, q = _smooth(p, valid), _smooth(q, valid)
        p, q = p / (p * valid).sum(1, keepdim=True), q / (q * valid).sum(1, keepdim=True)
        kl = torch.where(valid, p * torch.log(p / q), 0.0).sum(1)
        kl = torch.where(empty_q, float("inf"), kl)
        k = int(torch.argmin(kl))
        if float(kl[k]) < best_kl:
            best_kl, best_i = float(kl[k]), int(cand[k])
    return best_i


def _pair(reference: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    r, t = (torch.as_tensor(v).detach().to(torch.float64) for v in (reference, test))
    if r.shape != t.shape:
        raise ConfigError(f"shapes differ: reference {tuple(r.shape)}, test {tuple(t.shape)}")
    return r, t.to(r.device)


def sqnr(reference: Tensor, test: Tensor) -> float:
    """Signal to quantization noise, dB: ``10 log10(sum(ref^2) / sum((ref - test)^2))``.

    Each 6.02 dB is one bit: ideal 8-bit quantization of a full-scale uniform signal gives
    about 48 dB. Identical tensors give ``inf`` (no noise); computed in float64.

    Example:
        >>> round(sqnr(torch.ones(4), torch.ones(4) * 1.1), 3)
        20.0
    """
    r, t = _pair(reference, test)
    noise = float(((r - t) ** 2).sum())
    if noise == 0.0:
        return float("inf")
    return float(10.0 * torch.log10((r**2).sum() / noise))


def mse(reference: Tensor, test: Tensor) -> float:
    """Mean squared error ``mean((ref - test)^2)`` (float64).

    Example:
        >>> mse(torch.zeros(2), torch.tensor([1.0, 3.0]))
        5.0
    """
    r, t = _pair(reference, test)
    return float(((r - t) ** 2).mean())


def quantization_error(x: Tensor, scale: TensorLike, zero_point: TensorLike,
                       dtype: str = "int8", axis: int | None = None) -> dict[str, float]:
    """How much ``fake_quantize`` changes ``x``: ``mse``, ``sqnr_db`` and ``max_abs``.

    Example:
        >>> e = quantization_error(torch.tensor([0.1, 0.26]), 0.25, 0)
        >>> round(e["max_abs"], 4), round(e["mse"], 4)
        (0.1, 0.0051)
    """
    x = _values(x, "quantization_error")
    y = fake_quantize(x, scale, zero_point, dtype, axis)
    return {"mse": mse(x, y), "sqnr_db": sqnr(x, y),
            "max_abs": float((x.to(torch.float64) - y.to(torch.float64)).abs().max())}
