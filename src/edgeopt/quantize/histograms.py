"""What int8 does to each layer: weight and activation histograms, and layer sensitivity.

Three figures, one PNG each:

* weights: the float weights, their fake-quantized copy and the representable range;
* activations: the values a layer receives on real images and the calibrated range,
  with the fraction the range clips;
* sensitivity: accuracy lost per layer when only it is int8 (and when all but it are).

``qparams`` is a dict ``layer name -> {"weight": {...}, "input": {...}}`` where each part
holds ``scale`` (float or Tensor [C]), ``zero_point`` (int or Tensor [C]), ``dtype``
(``"int8"`` or ``"uint8"``) and, for weights, ``axis`` (0 for per-channel, None for
per-tensor). The maths (fake quantization, SQNR) is :mod:`edgeopt.quantize.math`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgeopt._io import write_with_atomic
from edgeopt.errors import ConfigError
from edgeopt.quantize.math import fake_quantize, qrange, sqnr


def collect_activations(
    model: torch.nn.Module,
    samples: torch.Tensor,
    layers: Sequence[str],
    max_values: int = 200_000,
    *,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The input values of named layers over ``samples``, flattened and subsampled.

    The model runs in eval mode under ``torch.no_grad`` (its training flag is restored
    afterwards). When a layer sees more than ``max_values`` values, a uniform random
    subset (seeded, without replacement) is kept, in the order the values were seen.

    Args:
        model: the float model.
        samples: float images [N, C, H, W] (moved to the model's device).
        layers: qualified module names as in ``model.named_modules()``.
        max_values: the most values kept per layer.
        batch_size: images per forward pass.
        seed: seed of the subsampling.

    Returns:
        ``{layer: Tensor [n]}`` (float32, CPU), ``n <= max_values``; empty for a layer the
        forward pass never calls.

    Raises:
        ConfigError: a layer name the model does not have, or ``max_values < 1``.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
        >>> acts = collect_activations(m, torch.randn(4, 1, 5, 5), ["1"])
        >>> acts["1"].shape
        torch.Size([72])
    """
    if max_values < 1:
        raise ConfigError(f"max_values must be at least 1, got {max_values}")
    modules = dict(model.named_modules())
    for name in layers:
        if name not in modules:
            raise ConfigError(_unknown_layer(name, modules))
    gen = torch.Generator().manual_seed(seed)
    # Per layer: kept values, their random keys and their positions in the stream. Keeping
    # the max_values smallest keys of everything seen is a uniform sample without replacement.
    state: dict[str, list[torch.Tensor]] = {}
    seen = dict.fromkeys(layers, 0)

    def hook_for(name: str):
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if x is None:
                return
            x = x.detach().flatten().float().cpu()
            pos = torch.arange(seen[name], seen[name] + x.numel())
            seen[name] += x.numel()
            keys = torch.rand(x.numel(), generator=gen)
            if name in state:
                vals, old_keys, old_pos = state[name]
                x, keys, pos = torch.cat([vals, x]), torch.cat([old_keys, keys]), torch.cat([old_pos, pos])
            if x.numel() > max_values:
                keep = torch.topk(keys, max_values, largest=False).indices
                x, keys, pos = x[keep], keys[keep], pos[keep]
            state[name] = [x, keys, pos]

        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in layers]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(samples), batch_size):
                model(samples[i : i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name in layers:
        if name not in state:
            out[name] = torch.empty(0)
            continue
        vals, _, pos = state[name]
        out[name] = vals[torch.argsort(pos)]
    return out


def quant_stats(values: torch.Tensor, qp: dict[str, Any]) -> dict[str, float]:
    """SQNR and clipping of fake-quantizing ``values`` with the parameters ``qp``.

    Args:
        values: float tensor (weights [C, ...] when ``qp["axis"]`` is 0).
        qp: ``{"scale", "zero_point", "dtype", "axis"?}`` (see the module docstring).

    Returns:
        ``{"sqnr_db": 10*log10(sum(x^2) / sum((x - fq(x))^2))`` (inf when exact),
        ``"clipped_fraction"``: share of values the clamp saturated, i.e. more than half a
        step outside the representable range}.

    Example:
        >>> s = quant_stats(torch.tensor([1.0, -1.0, 0.5, 100.0]),
        ...                 {"scale": 0.5, "zero_point": 0, "dtype": "int8"})
        >>> round(s["sqnr_db"], 3), s["clipped_fraction"]
        (8.755, 0.25)
    """
    x = values.detach().float()
    scale, zp, qmin, qmax = _params(qp, x)
    q = torch.round(x / scale) + zp
    clipped = ((q < qmin) | (q > qmax)).float().mean().item() if x.numel() else 0.0
    return {"sqnr_db": sqnr(x, _fake_quant(x, qp)), "clipped_fraction": clipped}


def plot_weight_histograms(
    model: torch.nn.Module,
    layers: Sequence[str],
    qparams: dict[str, dict[str, Any]],
    out_path: str | Path,
    max_layers: int = 12,
) -> Path:
    """One PNG: per layer, float vs fake-quantized weights, the int8 range and the SQNR.

    Layers without a ``"weight"`` entry in ``qparams`` are skipped; the first
    ``max_layers`` of the rest are drawn. Per-channel scales draw the range of the widest
    and of the narrowest channel.

    Args:
        model: the float model.
        layers: qualified module names (each must have a ``weight`` tensor).
        qparams: see the module docstring.
        out_path: the PNG to write (atomically).
        max_layers: the most panels drawn.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ConfigError: an unknown layer, a layer without weight, or bad qparams.

    Example:
        >>> import tempfile, pathlib
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
        >>> qp = {"0": {"weight": {"scale": 0.01, "zero_point": 0, "dtype": "int8", "axis": None}}}
        >>> p = plot_weight_histograms(m, ["0"], qp, pathlib.Path(tempfile.mkdtemp()) / "w.png")
        >>> p.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    modules = dict(model.named_modules())
    panels = []
    for name in layers:
        if name not in modules:
            raise ConfigError(_unknown_layer(name, modules))
        qp = (qparams.get(name) or {}).get("weight")
        if qp is None:
            continue
        w = getattr(modules[name], "weight", None)
        if not isinstance(w, torch.Tensor):
            raise ConfigError(f"layer {name!r} has qparams for a weight but no weight tensor")
        panels.append((name, w.detach().float().cpu(), qp))

    def draw(ax: Any, panel: tuple[str, torch.Tensor, dict[str, Any]]) -> None:
        _name, w, qp = panel
        wq = _fake_quant(w, qp)
        lo, hi = _ranges(qp, w)
        edges = _edges(w, lo, hi)
        _hist(ax, w, edges, label="float", fill=True)
        _hist(ax, wq, edges, label="fake-quant", fill=False)
        if lo.numel() == 1:
            _vlines(ax, lo[0], hi[0], "C3", "-", f"{qp['dtype']} range")
        else:
            width = hi - lo
            wide, narrow = int(torch.argmax(width)), int(torch.argmin(width))
            _vlines(ax, lo[wide], hi[wide], "C3", "-", f"widest channel range (ch {wide})")
            _vlines(ax, lo[narrow], hi[narrow], "C2", "--", f"narrowest channel range (ch {narrow})")
        stats = quant_stats(w, qp)
        _note(ax, f"SQNR {_db(stats['sqnr_db'])}")

    return _grid_figure(panels, draw, out_path, max_layers, "weights", "weight value")


def plot_activation_histograms(
    activations: dict[str, torch.Tensor],
    qparams: dict[str, dict[str, Any]],
    out_path: str | Path,
    max_layers: int = 12,
) -> Path:
    """One PNG: per layer, the captured input values, the chosen range, clipping and SQNR.

    Layers without an ``"input"`` entry in ``qparams`` are skipped.

    Args:
        activations: ``{layer: values}`` as returned by :func:`collect_activations`.
        qparams: see the module docstring.
        out_path: the PNG to write (atomically).
        max_layers: the most panels drawn.

    Returns:
        ``out_path`` as a Path.

    Example:
        >>> import tempfile, pathlib
        >>> acts = {"fc": torch.randn(1000)}
        >>> qp = {"fc": {"input": {"scale": 0.02, "zero_point": 128, "dtype": "uint8"}}}
        >>> p = plot_activation_histograms(acts, qp, pathlib.Path(tempfile.mkdtemp()) / "a.png")
        >>> p.stat().st_size > 0
        True
    """
    panels = [
        (name, v.detach().float().flatten().cpu(), (qparams.get(name) or {})["input"])
        for name, v in activations.items()
        if "input" in (qparams.get(name) or {})
    ]

    def draw(ax: Any, panel: tuple[str, torch.Tensor, dict[str, Any]]) -> None:
        _name, x, qp = panel
        lo, hi = _ranges(qp, x)
        _vlines(ax, lo[0], hi[0], "C3", "-", f"{qp['dtype']} range")
        if not x.numel():
            _note(ax, "no values captured (layer not called)")
            return
        _hist(ax, x, _edges(x, lo, hi), label="float", fill=True)
        stats = quant_stats(x, qp)
        _note(ax, f"clipped {100 * stats['clipped_fraction']:.3g} %\nSQNR {_db(stats['sqnr_db'])}"
              f"\n{x.numel():,} values")

    return _grid_figure(panels, draw, out_path, max_layers, "activations (layer inputs)", "input value")


def plot_sensitivity(rows: Sequence[dict[str, Any]], out_path: str | Path) -> Path:
    """One PNG: accuracy lost per layer (bars) and output SQNR, most sensitive layer on top.

    Args:
        rows: ``{"layer", "drop_alone", "drop_all_but", "sqnr_db"}`` per layer; drops in
            accuracy points (``drop_all_but`` may be negative or None when not measured).
        out_path: the PNG to write (atomically).

    Returns:
        ``out_path`` as a Path.

    Raises:
        ConfigError: a row lacks ``layer`` or ``drop_alone``.

    Example:
        >>> import tempfile, pathlib
        >>> rows = [{"layer": "conv1", "drop_alone": 1.5, "drop_all_but": 0.2, "sqnr_db": 21.0},
        ...         {"layer": "fc", "drop_alone": 0.1, "drop_all_but": 2.0, "sqnr_db": 35.0}]
        >>> p = plot_sensitivity(rows, pathlib.Path(tempfile.mkdtemp()) / "s.png")
        >>> p.stat().st_size > 0
        True
    """
    for i, r in enumerate(rows):
        if "layer" not in r or "drop_alone" not in r:
            raise ConfigError(f"sensitivity row {i} needs 'layer' and 'drop_alone', got {sorted(r)}")
    # Largest drop first; a drop that was not measured (None/nan) goes last.
    rows = sorted(rows, key=lambda r: (0, -v) if math.isfinite(v := _num(r["drop_alone"])) else (1, 0))
    plt = _pyplot()
    n = max(len(rows), 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 2.0 + 0.26 * n), sharey=True,
                                  gridspec_kw={"width_ratios": [2, 1]}, layout="constrained")
    try:
        y = list(range(len(rows)))
        alone = [_num(r["drop_alone"]) for r in rows]
        all_but = [_num(r.get("drop_all_but")) for r in rows]
        sq = [_num(r.get("sqnr_db")) for r in rows]
        ax.barh([v - 0.2 for v in y], _finite(alone), height=0.4, color="C3", label="only this layer int8")
        ax.barh([v + 0.2 for v in y], _finite(all_but), height=0.4, color="C0",
                label="every layer but this one int8")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [str(r["layer"]) for r in rows], fontsize=7 if n > 30 else 8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # most sensitive on top, no empty margin
        ax.set_xlabel("top-1 accuracy lost (points)")
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)  # never over a bar
        ax.grid(axis="x", alpha=0.3)
        ax2.barh(y, _finite(sq), height=0.6, color="C2")
        for yi, v in zip(y, sq):
            if not math.isfinite(v):  # inf: the layer's int8 output is exact; nan: not measured
                ax2.text(0, yi, " inf" if v > 0 else " n/a", va="center", fontsize=7)
        ax2.set_xlabel("output SQNR, only this layer int8 (dB)")
        ax2.grid(axis="x", alpha=0.3)
        fig.suptitle(f"int8 sensitivity of {len(rows)} layers (sorted by accuracy lost alone)")
        return _save(fig, out_path)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- helpers


def _unknown_layer(name: str, modules: dict[str, torch.nn.Module]) -> str:
    names = [n for n in modules if n]
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"unknown layer {name!r}; the model's layers include: {shown} ({len(names)} in all)"


def _axis(qp: dict[str, Any]) -> int | None:
    """0 for per-channel parameters, None for per-tensor ones (one scale, whatever the axis)."""
    axis = qp.get("axis")
    if axis is None or torch.as_tensor(qp["scale"]).numel() == 1:
        return None
    if axis != 0:
        raise ConfigError(f"only per-channel axis 0 is supported, got axis={axis}")
    return 0


def _fake_quant(x: torch.Tensor, qp: dict[str, Any]) -> torch.Tensor:
    return fake_quantize(x, qp["scale"], qp["zero_point"], qp.get("dtype", "int8"), _axis(qp))


def _params(qp: dict[str, Any], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """scale, zero point (both broadcastable to ``x``) and the integer range.

    ``qp["qmin"]``/``qp["qmax"]`` override the dtype's range (7-bit reduce-range weights).
    """
    qmin, qmax = qrange(qp.get("dtype", "int8"))
    qmin, qmax = int(qp.get("qmin", qmin)), int(qp.get("qmax", qmax))
    scale = torch.as_tensor(qp["scale"], dtype=torch.float32).flatten()
    zp = torch.as_tensor(qp["zero_point"], dtype=torch.float32).flatten()
    if bool((scale <= 0).any()) or not bool(torch.isfinite(scale).all()):
        raise ConfigError(f"quantization scale must be positive and finite, got {scale.tolist()[:4]}")
    if _axis(qp) is None:
        return scale[0], zp[0], qmin, qmax
    if scale.numel() != x.shape[0] or zp.numel() not in (1, x.shape[0]):
        raise ConfigError(f"per-channel scale has {scale.numel()} values for {x.shape[0]} channels")
    shape = (-1,) + (1,) * (x.dim() - 1)  # [C, 1, 1, ...] broadcasts along axis 0
    return scale.reshape(shape), zp.reshape(shape) if zp.numel() > 1 else zp[0], qmin, qmax


def _ranges(qp: dict[str, Any], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (or one) representable [lo, hi]: ((qmin - zp) * scale, (qmax - zp) * scale)."""
    scale, zp, qmin, qmax = _params(qp, x)
    scale, zp = scale.flatten(), zp.flatten()
    return (qmin - zp) * scale, (qmax - zp) * scale


def _db(v: float) -> str:
    return f"{v:.1f} dB" if math.isfinite(v) else ("inf dB (exact)" if v > 0 else "-inf dB")


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _finite(vs: list[float]) -> list[float]:
    return [v if math.isfinite(v) else 0.0 for v in vs]


def _edges(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int = 120):
    """Bin edges covering the data and the representable range, so both are visible."""
    import numpy as np

    a = min(float(x.min()) if x.numel() else 0.0, float(lo.min()))
    b = max(float(x.max()) if x.numel() else 0.0, float(hi.max()))
    if b <= a:
        a, b = a - 0.5, b + 0.5
    return np.linspace(a, b, bins + 1)


def _hist(ax: Any, x: torch.Tensor, edges: Any, label: str, fill: bool) -> None:
    import numpy as np

    counts, _ = np.histogram(x.numpy(), bins=edges)
    if fill:
        ax.stairs(counts, edges, fill=True, alpha=0.45, color="C0", label=label)
    else:
        ax.stairs(counts, edges, color="C1", lw=1.0, label=label)


def _vlines(ax: Any, lo: torch.Tensor, hi: torch.Tensor, color: str, style: str, label: str) -> None:
    ax.axvline(float(lo), color=color, ls=style, lw=1.1, label=label)
    ax.axvline(float(hi), color=color, ls=style, lw=1.1)


def _note(ax: Any, text: str) -> None:
    ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=7,
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8, "lw": 0})


def _grid_figure(panels: list, draw: Any, out_path: str | Path, max_layers: int, what: str,
                 xlabel: str) -> Path:
    plt = _pyplot()
    shown = panels[: max(max_layers, 0)]
    ncols = min(3, max(len(shown), 1))
    nrows = max(math.ceil(len(shown) / ncols), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.2 * nrows), squeeze=False)
    try:
        flat = list(axes.flat)
        for ax, panel in zip(flat, shown):
            draw(ax, panel)
            ax.set_title(panel[0], fontsize=9)
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.8)  # log scale: one value still shows as a bar
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(loc="upper right", fontsize=6)
        for ax in flat[len(shown):]:
            ax.axis("off")
        if not shown:
            flat[0].text(0.5, 0.5, "no layer has quantization parameters for this",
                         ha="center", va="center", transform=flat[0].transAxes)
        extra = f" (first {len(shown)} of {len(panels)} layers)" if len(panels) > len(shown) else ""
        fig.suptitle(f"int8 {what}{extra}; counts on a log scale", fontsize=10)
        fig.tight_layout()
        return _save(fig, out_path)
    finally:
        plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_path: str | Path) -> Path:
    return write_with_atomic(Path(out_path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
