"""Per-layer pruning sensitivity: each layer pruned alone, at several sparsities.

:func:`scan_sensitivity` prunes one chosen layer at a time (the others untouched) with
``config.method`` at each sparsity and measures top-1 accuracy on held-out images (the
validation split, else test) with the model as given: no fine-tuning. The drop, in
accuracy points from the unpruned model, says how much each layer can lose. Per layer it
recommends the largest sparsity whose drop, and the drop of every smaller sparsity
scanned, is at most ``threshold`` points (0 when even the smallest loses more). The
recommendations are written as a sparsity table (:mod:`edgeopt.prune.table`) that feeds
straight into ``PruneConfig.layer_ratios`` (``edgeopt prune --table``).

Unstructured and OBS prune a layer in place and its weights are restored after each
measurement; structured pruning (channels, which also shrinks the layers that consume
them) works on a fresh copy of the model for each measurement.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt._io import write_json_atomic, write_text_atomic, write_with_atomic
from edgeopt.errors import ConfigError
from edgeopt.prune.config import PruneConfig

#: file names written into ``out_dir``
FILES = {"csv": "sensitivity.csv", "json": "sensitivity.json", "png": "sensitivity.png",
         "table": "sparsity_table.csv"}


@dataclasses.dataclass
class SensitivityResult:
    """What :func:`scan_sensitivity` measured.

    Attributes:
        rows: one per scanned layer, in model order: ``{"layer", "kind", "params",
            "drops" (points lost per sparsity), "accs" (fractions), "recommended"}``.
        sparsities: the sparsities scanned, ascending.
        base_acc: accuracy of the unpruned model on the same images (a fraction).
        samples / split: how many images of which split were measured.
        threshold: the largest drop (points) a recommended sparsity may cost.
        method: the pruning method used.
        protected: ``{layer: reason}`` of the prunable layers not scanned.
        files: paths written (``csv``, ``json``, ``png``, ``table``).
        seconds: wall time.
    """

    rows: list[dict[str, Any]]
    sparsities: list[float]
    base_acc: float
    samples: int
    split: str
    threshold: float
    method: str
    protected: dict[str, str] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def table(self) -> dict[str, float]:
        """``{layer: recommended sparsity}``: a ``PruneConfig.layer_ratios``."""
        return {r["layer"]: r["recommended"] for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field plus ``table``."""
        return dataclasses.asdict(self) | {"table": self.table}


def _check(sparsities: Sequence[float], samples: int, threshold: float) -> list[float]:
    levels = sorted({float(s) for s in sparsities})
    if not levels or any(not 0.0 < s < 1.0 for s in levels):
        raise ConfigError(f"sparsities must be fractions in (0, 1), e.g. 0.5,0.7,0.9; got {list(sparsities)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be an integer >= 1, got {samples!r}")
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
        raise ConfigError(f"threshold must be >= 0 accuracy points, got {threshold!r}")
    return levels


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(x), 256))
    return correct / len(y)


def recommend(drops: Sequence[float], sparsities: Sequence[float], threshold: float) -> float:
    """The largest sparsity whose drop, and the drops of all smaller ones, are at most
    ``threshold``; 0.0 when the smallest already loses more.

    Example:
        >>> recommend([0.2, 0.9, 3.0], [0.5, 0.7, 0.9], 1.0)
        0.7
        >>> recommend([0.2, 1.5, 0.4], [0.5, 0.7, 0.9], 1.0)  # a noisy 0.9 does not count
        0.5
    """
    best = 0.0
    for d, s in zip(drops, sparsities):
        if d > threshold:
            break
        best = s
    return best


def scan_sensitivity(
    model: nn.Module, data: Any, config: PruneConfig | None = None, out_dir: str | Path | None = None,
    *, sparsities: Sequence[float] = (0.5, 0.7, 0.9), samples: int = 512, threshold: float = 1.0,
    progress: bool = True,
) -> SensitivityResult:
    """Prune each chosen layer alone at each sparsity; measure, recommend, write.

    Args:
        model: the model (carrying its ModelSpec); not modified.
        data: the DataModule (accuracy on ``val``, else ``test``; OBS and ``taylor``
            importance calibrate on ``train``).
        config: which layers (``include``, ``exclude``, ``protect_first_last``), the
            ``method`` (default unstructured) and its settings; ``ratio`` is ignored.
        out_dir: where ``sensitivity.csv``, ``sensitivity.json``, ``sensitivity.png`` (a
            layers x sparsities heatmap) and ``sparsity_table.csv`` go (atomically);
            None: nothing is written.
        sparsities: fractions removed to try (of weights; of channels for structured).
        samples: held-out images measured (the same ones for every configuration).
        threshold: the largest drop, in accuracy points, a recommended sparsity may cost.
        progress: a progress bar over the configurations.

    Returns:
        A :class:`SensitivityResult`.

    Raises:
        ConfigError: a sparsity outside (0, 1), a negative threshold, a pattern that
            names no layer, or an ``out_dir`` that cannot be written (before any work).

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> res = scan_sensitivity(create_model("simple_cnn", data.spec), data, samples=64, progress=False)
        >>> [r["layer"] for r in res.rows], len(res.rows[0]["drops"])
        (['features.1.0', 'features.3.0', 'features.5.0'], 3)
    """
    from edgeopt.prune._base import get_method
    from edgeopt.prune.layers import select_layers

    t0 = time.perf_counter()
    cfg = config or PruneConfig()
    levels = _check(sparsities, samples, threshold)
    if out_dir is not None:
        from edgeopt._outputs import ensure_writable_dir

        ensure_writable_dir(out_dir, "out_dir")  # before the scan, not after it
    work = copy.deepcopy(model).eval()
    layers, protected = select_layers(work, cfg.include, cfg.exclude, cfg.protect_first_last)
    split = "val" if len(data.split("val")) else "test"
    x, y = data.samples(samples, split=split, seed=cfg.seed + 1)
    p = next(work.parameters(), None)
    if p is not None:
        x, y = x.to(p.device), y.to(p.device)
    base_acc = _accuracy(work, x, y)
    method = get_method(cfg.method)
    structured = cfg.method == "structured"
    bar = task = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"pruning sensitivity ({cfg.method})", total=len(layers) * len(levels))
    rows: list[dict[str, Any]] = []
    try:
        for name in layers:
            module = work.get_submodule(name)
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
            accs = []
            for s in levels:
                c = cfg.replace(ratio=s, target="ratio", scope="local", schedule="oneshot", layer_ratios=None)
                target = copy.deepcopy(work) if structured else work
                out = method(target, c, [name], {name: s}, data, False)
                accs.append(_accuracy(out.model.eval(), x, y))
                if not structured:
                    module.load_state_dict(saved)  # the next run starts from the unpruned layer
                if bar is not None:
                    bar.advance(task)
            drops = [round(100.0 * (base_acc - a), 3) for a in accs]
            rows.append({"layer": name, "kind": type(module).__name__, "params": module.weight.numel(),
                         "drops": drops, "accs": [round(a, 6) for a in accs],
                         "recommended": recommend(drops, levels, threshold)})
    finally:
        if bar is not None:
            bar.stop()
    result = SensitivityResult(rows, levels, base_acc, len(y), split, float(threshold), cfg.method,
                               dict(protected))
    if out_dir is not None:
        result.files = write_sensitivity(result, Path(out_dir))
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _col(s: float) -> str:
    return f"drop_{100 * s:g}"


def write_sensitivity(result: SensitivityResult, out_dir: Path) -> dict[str, str]:
    """Write the CSV, the JSON, the heatmap and the recommended sparsity table.

    The table lists every scanned layer with its recommendation and the protected layers
    at 0 (commented), in model order; ``edgeopt prune --table`` reads it.
    """
    from edgeopt.prune.table import write_sparsity_table

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {k: str(out_dir / v) for k, v in FILES.items()}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "kind", "params", *[_col(s) for s in result.sparsities], "recommended"])
    for r in result.rows:
        w.writerow([r["layer"], r["kind"], r["params"], *r["drops"], r["recommended"]])
    write_text_atomic(out_dir / FILES["csv"], buf.getvalue())
    table = dict(result.table)
    comments = {r["layer"]: f"every scanned sparsity lost more than {result.threshold:g} points"
                for r in result.rows if r["recommended"] == 0.0}
    for name, why in result.protected.items():
        table[name], comments[name] = 0.0, f"protected ({why}): not scanned, not pruned"
    write_sparsity_table(out_dir / FILES["table"], table, comments=comments)
    plot_sensitivity_heatmap(result, out_dir / FILES["png"])
    write_json_atomic(out_dir / FILES["json"], result.to_dict() | {"files": files})
    return files


def plot_sensitivity_heatmap(result: SensitivityResult, out_path: str | Path) -> Path:
    """One PNG: accuracy points lost, layers (rows, model order) x sparsities (columns);
    the recommended cell of each layer is boxed.

    Example:
        >>> import tempfile, pathlib
        >>> r = SensitivityResult([{"layer": "conv", "drops": [0.1, 2.0], "recommended": 0.5}],
        ...                       [0.5, 0.9], 0.9, 100, "val", 1.0, "unstructured")
        >>> plot_sensitivity_heatmap(r, pathlib.Path(tempfile.mkdtemp()) / "s.png").stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows, levels = result.rows, result.sparsities
    drops = [[float(d) for d in r["drops"]] for r in rows] or [[0.0] * len(levels)]
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(levels), 1.6 + 0.3 * max(len(rows), 1)), layout="constrained")
    try:
        top = max(max(max(d) for d in drops), result.threshold, 1e-9)
        im = ax.imshow(drops, cmap="Reds", vmin=0.0, vmax=top, aspect="auto")
        for i, r in enumerate(rows):
            for j, d in enumerate(r["drops"]):
                ax.text(j, i, f"{d:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if d > 0.6 * top else "black")
            if r["recommended"] in levels:
                j = levels.index(r["recommended"])
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="C0"))
        ax.set_xticks(range(len(levels)), [f"{100 * s:g}%" for s in levels])
        ax.set_yticks(range(len(rows)), [r["layer"] for r in rows], fontsize=7 if len(rows) > 30 else 8)
        ax.set_xlabel("sparsity of the layer (pruned alone)")
        fig.colorbar(im, ax=ax, label="top-1 accuracy lost (points)")
        ax.set_title(f"{result.method} pruning sensitivity; boxed: recommended (drop <= {result.threshold:g})\n"
                     f"base {100 * result.base_acc:.2f}% on {result.samples} {result.split} images", fontsize=8)
        write_with_atomic(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return Path(out_path)
