"""Pareto plots: accuracy against latency and against size, one point per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt._io import write_with_atomic


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower cost and higher accuracy).

    Args:
        points: (cost, accuracy) pairs; lower cost and higher accuracy are better.

    Example:
        >>> pareto_front([(1, 0.9), (2, 0.8), (3, 0.95)])
        [0, 2]
    """
    front = []
    for i, (c, a) in enumerate(points):
        dominated = any(
            (c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def pareto_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write pareto_latency.png and pareto_size.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and CI
    import matplotlib.pyplot as plt

    variants = [v for v in results.get("variants", []) if (v.get("accuracy") or {}).get("top1") is not None]
    if not variants:
        return []
    axes = [
        ("pareto_latency.png", "batch-1 median latency (ms)", lambda v: ((v.get("latency") or {}).get("batch1") or {}).get("median_ms")),
        ("pareto_size.png", "size on disk (MB, 10^6 bytes)", lambda v: (v.get("size") or {}).get("bytes", 0) / 1e6),
    ]
    written = []
    for fname, xlabel, xf in axes:
        pts = [(xf(v), 100 * v["accuracy"]["top1"], v.get("name", "?")) for v in variants]
        pts = [p for p in pts if p[0] is not None]
        if not pts:
            continue
        front = set(pareto_front([(x, y) for x, y, _ in pts]))
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for i, (x, y, name) in enumerate(pts):
            ax.scatter([x], [y], color="C3" if i in front else "C0", zorder=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        fx = sorted((pts[i][0], pts[i][1]) for i in front)
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "--", color="C3", alpha=0.6, label="Pareto front")
        ax.margins(x=0.15)  # room for the labels of the outermost points
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, min(hi, 100.5))  # accuracy never exceeds 100 %
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        written.append(path)
    return written
