"""Figures of a pruning run: per-layer bars, weight histograms before/after, curves.

Each function writes one PNG atomically and returns its path; :func:`prune_figures`
writes the set for one :class:`~edgeopt.prune.PruneResult` and returns report entries
(``{"title", "path", "caption"}``, paths relative to the folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt._io import write_with_atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_layer_bars(rows: Sequence[dict[str, Any]], out_path: str | Path, structured: bool) -> Path:
    """Per-layer bars: output channels before/after (structured) or sparsity in % (masks).

    ``rows`` are :attr:`PruneResult.layers`; protected layers are drawn grey.
    """
    plt = _plt()
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rows) + 2), 4))
    xs = range(len(rows))
    colours = ["0.7" if r.get("protected") else "C0" for r in rows]
    if structured:
        ax.bar(xs, [r["channels_before"] for r in rows], color="0.85", label="before")
        ax.bar(xs, [r["channels_after"] for r in rows], color=colours, label="after")
        ax.set_ylabel("output channels")
    else:
        ax.bar(xs, [100 * r["sparsity"] for r in rows], color=colours)
        ax.set_ylabel("zero weights (%)")
        ax.set_ylim(0, 100)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.grid(axis="y", alpha=0.3)
    if structured:
        ax.legend(fontsize=8)
    ax.set_title("per-layer channels" if structured else "per-layer sparsity (grey: protected)")
    return _save(fig, Path(out_path))


def plot_weight_histograms(before: nn.Module, after: nn.Module, layers: Sequence[str],
                           out_path: str | Path, max_layers: int = 6) -> Path:
    """Weight histograms of up to ``max_layers`` layers, before and after pruning (log scale)."""
    plt = _plt()
    layers = list(layers)[:max_layers]
    cols = min(3, max(1, len(layers)))
    nrows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    mods_after = dict(after.named_modules())
    for ax, name in zip(axes.flat, layers):
        w0 = before.get_submodule(name).weight.detach().flatten().float()
        w1 = mods_after[name].weight.detach().flatten().float() if name in mods_after else w0[:0]
        lo, hi = float(w0.min()), float(w0.max())
        bins = torch.linspace(lo, hi if hi > lo else lo + 1e-6, 81).numpy()
        ax.hist(w0.numpy(), bins=bins, alpha=0.5, label="before", color="C0")
        ax.hist(w1.numpy(), bins=bins, alpha=0.6, label="after", color="C3")
        ax.set_yscale("log")
        ax.set_title(f"{name} ({int(torch.count_nonzero(w1))}/{w0.numel()} non-zero)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, Path(out_path))


def plot_curve(points: Sequence[dict[str, Any]], x: str, out_path: str | Path, *,
               xlabel: str, y: str = "val_acc", ylabel: str = "accuracy (%)",
               labels: str | None = None) -> Path:
    """An accuracy curve (e.g. vs sparsity, MACs or latency) from dicts holding ``x``/``y``.

    ``labels`` names a key whose values split the points into one line per value (e.g.
    ``method``: magnitude vs obs).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    groups: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if p.get(x) is None or p.get(y) is None:
            continue
        groups.setdefault(str(p.get(labels, "")) if labels else "", []).append((float(p[x]), float(p[y])))
    for i, (label, pts) in enumerate(groups.items()):
        pts.sort()
        scale = 100.0 if all(v <= 1.0 for _, v in pts) and "%" in ylabel else 1.0
        ax.plot([a for a, _ in pts], [scale * b for _, b in pts], "o-", color=f"C{i}", label=label or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if labels:
        ax.legend(fontsize=8)
    return _save(fig, Path(out_path))


def prune_figures(before: nn.Module, result: Any, out_dir: str | Path, stem: str) -> list[dict[str, str]]:
    """The figures of one pruning result; report entries with paths relative to ``out_dir``."""
    out = Path(out_dir)
    structured = result.config.method == "structured"
    figs = []
    bars = plot_layer_bars(result.layers, out / f"{stem}_layers.png", structured)
    figs.append({"title": f"{stem}: per-layer {'channels' if structured else 'sparsity'}", "path": bars.name,
                 "caption": "Grey: protected or excluded layers." if not structured else
                            "Output channels of each prunable layer before (light) and after pruning."})
    chosen = [r["name"] for r in result.layers if not r.get("protected")]
    if chosen:
        h = plot_weight_histograms(before, result.model, chosen, out / f"{stem}_weights.png")
        figs.append({"title": f"{stem}: weights before and after", "path": h.name,
                     "caption": "Weight histograms (log count) of the first pruned layers."})
    if len(result.history) > 1:
        c = plot_curve(result.history, "sparsity" if not structured else "macs_ratio",
                       out / f"{stem}_curve.png",
                       xlabel="sparsity" if not structured else "MACs kept (fraction)")
        figs.append({"title": f"{stem}: accuracy along the schedule", "path": c.name,
                     "caption": "Validation accuracy after each prune/fine-tune step."})
    return figs
