"""A grid over temperature and alpha of response KD, with a CSV/JSON table and a heatmap.

Every cell is trained for every seed from the same starting weights; the baseline (no
teacher) does not depend on temperature or alpha, so it is trained once per seed and each
cell's gain and verdict are measured against it (:func:`~edgeopt.distill.summarize`). The
teacher copy and its logits cache are shared by all cells.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from edgeopt.distill._base import _check_inputs, summarize
from edgeopt.distill._run import accuracy, reinit, train_arm
from edgeopt.distill.config import DistillConfig
from edgeopt.distill.teacher import DistillLoss, cache_status, frozen_teacher
from edgeopt.errors import ConfigError

#: columns of the CSV table, in order
COLUMNS = ("temperature", "alpha", "student_mean", "student_std", "baseline_mean", "baseline_std",
           "gain", "threshold", "verdict", "test_accs")


@dataclasses.dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
        temperatures / alphas: the grid's axes.
        rows: one dict per cell (temperatures outer, alphas inner): :data:`COLUMNS`, the
            accuracies being test accuracies (fractions) and ``test_accs`` one per seed.
        baseline: ``{"mean", "std", "test_accs"}`` of the student trained alone, or None.
        teacher_acc: the teacher's test accuracy.
        config: the base config (each cell replaces temperature and alpha).
        info: ``teacher_cache`` and ``teacher_forwards``.
        paths: files written (``csv``, ``json``, ``heatmap``), empty without ``out_dir``.
        seconds: wall time.
    """

    temperatures: list[float]
    alphas: list[float]
    rows: list[dict[str, Any]]
    baseline: dict[str, Any] | None
    teacher_acc: float | None
    config: DistillConfig
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    paths: dict[str, Path] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def best(self) -> dict[str, Any]:
        """The cell with the highest mean test accuracy (the first on ties)."""
        return max(self.rows, key=lambda r: r["student_mean"])

    def grid(self, key: str = "student_mean") -> list[list[Any]]:
        """``key`` of each cell as ``[temperature][alpha]``."""
        n = len(self.alphas)
        return [[r[key] for r in self.rows[i * n:(i + 1) * n]] for i in range(len(self.temperatures))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no models)."""
        return {"temperatures": list(self.temperatures), "alphas": list(self.alphas),
                "rows": copy.deepcopy(self.rows), "baseline": copy.deepcopy(self.baseline),
                "teacher_acc": self.teacher_acc, "best": dict(self.best),
                "config": self.config.to_dict(), "info": dict(self.info), "seconds": self.seconds}

    def write_csv(self, path: str | Path) -> Path:
        """The table as CSV (one row per cell, :data:`COLUMNS`), written atomically."""
        from edgeopt._io import write_text_atomic

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.rows:
            w.writerow([";".join(f"{a:.6f}" for a in r[c]) if c == "test_accs"
                        else "" if r[c] is None else f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]
                        for c in COLUMNS])
        return write_text_atomic(path, buf.getvalue())

    def write_json(self, path: str | Path) -> Path:
        """:meth:`to_dict` as JSON, written atomically."""
        from edgeopt._io import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    def plot_heatmap(self, path: str | Path) -> Path:
        """A PNG heatmap of the mean test accuracy (%) over temperature x alpha, each cell
        annotated with its accuracy and, with a baseline, its gain in points."""
        import matplotlib

        matplotlib.use("Agg")  # no screen on servers and CI
        import matplotlib.pyplot as plt

        from edgeopt._io import write_with_atomic

        acc = [[100.0 * v for v in row] for row in self.grid("student_mean")]
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(self.alphas), 1.0 + 0.8 * len(self.temperatures)))
        im = ax.imshow(acc, cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax, label="test accuracy (%)")
        ax.set_xticks(range(len(self.alphas)), [f"{a:g}" for a in self.alphas])
        ax.set_yticks(range(len(self.temperatures)), [f"{t:g}" for t in self.temperatures])
        ax.set_xlabel("alpha (weight of the KD term)")
        ax.set_ylabel("temperature")
        gains = self.grid("gain")
        lo, hi = min(map(min, acc)), max(map(max, acc))
        for i, row in enumerate(acc):
            for j, v in enumerate(row):
                text = f"{v:.1f}" if gains[i][j] is None else f"{v:.1f}\n{100 * gains[i][j]:+.1f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="black" if hi > lo and v > lo + 0.6 * (hi - lo) else "white")
        title = "response KD sweep"
        if self.baseline is not None:
            title += f" (baseline {100 * self.baseline['mean']:.1f} %)"
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        try:
            write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        finally:
            plt.close(fig)
        return Path(path)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """``sweep.csv``, ``sweep.json`` and ``sweep_heatmap.png`` in ``out_dir``."""
        out = Path(out_dir)
        self.paths = {"csv": self.write_csv(out / "sweep.csv"), "json": self.write_json(out / "sweep.json"),
                      "heatmap": self.plot_heatmap(out / "sweep_heatmap.png")}
        return self.paths


def sweep(student: nn.Module, teacher: nn.Module, config: DistillConfig | None, data: Any,
          temperatures: Sequence[float], alphas: Sequence[float], *, progress: bool = False,
          out_dir: str | Path | None = None) -> SweepResult:
    """Train response KD for every ``temperature x alpha`` (and every seed of ``config``).

    Args:
        student: the student (copied for each run; not changed).
        teacher: the trained teacher (a frozen copy is used).
        config: epochs, seeds, baseline, ... (method ``response``); temperature and alpha
            are replaced by each cell's.
        data: the DataModule.
        temperatures: temperatures (> 0).
        alphas: KD weights in ``[0, 1]``.
        progress: the Trainer's progress output.
        out_dir: write the CSV, JSON and heatmap there (default ``config.out_dir``; None:
            nothing is written).

    Returns:
        A :class:`SweepResult`.

    Raises:
        ConfigError: an empty axis, a bad temperature or alpha, a method other than
            ``response``, or what :func:`~edgeopt.distill.distill` refuses.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> t, s = create_model("simple_cnn", data.spec), create_model("simple_cnn", data.spec)
        >>> cfg = DistillConfig(epochs=1, max_steps_per_epoch=2, batch_size=32, baseline=False)
        >>> r = sweep(s, t, cfg, data, temperatures=[2.0, 4.0], alphas=[0.5])
        >>> [(row["temperature"], row["alpha"]) for row in r.rows]
        [(2.0, 0.5), (4.0, 0.5)]
    """
    config = config or DistillConfig()
    t0 = time.perf_counter()
    if config.method != "response":
        raise ConfigError(f"sweep grids response KD: use DistillConfig.method='response', "
                          f"not {config.method!r}")
    temperatures, alphas = [float(t) for t in temperatures], [float(a) for a in alphas]
    if not temperatures or not alphas:
        raise ConfigError("sweep needs at least one temperature and one alpha")
    cells = [config.replace(temperature=t, alpha=a) for t in temperatures for a in alphas]  # validates
    out_dir = out_dir if out_dir is not None else config.out_dir
    _check_inputs(student, teacher, config.replace(out_dir=str(out_dir) if out_dir else None), data)
    seeds = [config.seed + k for k in range(config.seeds)]
    starts = {s: student if config.init == "given" else reinit(student, s) for s in seeds}
    base_accs = None
    if config.baseline:
        base_accs = [train_arm(copy.deepcopy(starts[s]), config, data, s, None, progress,
                               "baseline (no teacher)").test_acc for s in seeds]
    loss = DistillLoss(teacher, config)  # one teacher copy and logits cache for every cell
    rows = []
    for cell in cells:
        loss.config = cell
        label = f"T={cell.temperature:g} alpha={cell.alpha:g}"
        accs = [train_arm(copy.deepcopy(starts[s]), cell, data, s, loss, progress, label).test_acc
                for s in seeds]
        summ = summarize(accs, base_accs)
        rows.append({"temperature": cell.temperature, "alpha": cell.alpha,
                     **{k: summ[k] for k in COLUMNS if k in summ}, "test_accs": accs})
    baseline = None
    if base_accs is not None:
        b = summarize(base_accs)
        baseline = {"mean": b["student_mean"], "std": b["student_std"], "test_accs": base_accs}
    result = SweepResult(temperatures=temperatures, alphas=alphas, rows=rows, baseline=baseline,
                         teacher_acc=accuracy(frozen_teacher(teacher), data, "test"), config=config,
                         info={"teacher_cache": cache_status(config, data),
                               "teacher_forwards": loss.forwards},
                         seconds=time.perf_counter() - t0)
    if out_dir:
        result.write(out_dir)
    return result
