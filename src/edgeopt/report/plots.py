"""Pareto plots: accuracy against latency and against size, one labelled point per variant."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgeopt._io import write_with_atomic

#: a log x axis when the largest value is this many times the smallest
LOG_RANGE = 20.0


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


def _overlap(a, b) -> float:
    """Area shared by two display-space boxes (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


# Offsets (points) tried around each marker, nearest first, then further out.
_OFFSETS = [(6, 4), (6, -12), (-6, 4), (-6, -12), (0, 10), (0, -18)] + [
    (round(r * math.cos(t)), round(r * math.sin(t))) for r in (22, 36, 52, 70) for t in
    [k * math.pi / 6 for k in range(12)]]


def place_labels(ax, xs: list[float], ys: list[float], names: list[str], fontsize: float = 8,
                 avoid: list | None = None) -> list:
    """Label each point where its text overlaps no other label, marker, ``avoid`` box (the
    legend) or the axes' edge.

    Greedy and deterministic: points are labelled left to right; for each, the first offset
    in :data:`_OFFSETS` (nearest first) whose text box overlaps nothing placed is kept, else
    the least-overlapping one; a label moved far from its point gets a thin leader line.

    Why not adjustText: it is one more dependency for one function, its iterative repulsion
    depends on its version and on iteration limits, and it does not promise zero overlap.
    Here every candidate's box is measured with the figure's own renderer
    (``Text.get_window_extent``), so the result is the same on every run and a test can check
    that no two boxes overlap.

    Args:
        ax: the axes, with its limits and scales final (labels are placed in display space).
        xs, ys: the points, in data coordinates.
        names: one label per point.
        fontsize: in points.
        avoid: more display-space boxes ``(x0, y0, x1, y1)`` to keep clear of.

    Returns:
        The placed labels' display-space text boxes ``(x0, y0, x1, y1)``, in the order of
        ``names`` (placement keeps a pixel of space around each).
    """
    renderer = ax.figure.canvas.get_renderer()
    pts = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    r = 5.5  # marker half-size in pixels: the baseline diamond (s=60) is ~5.4 px from its centre at 100 dpi
    taken = [(px - r, py - r, px + r, py + r) for px, py in pts] + list(avoid or [])
    frame = ax.get_window_extent(renderer)
    boxes: list = [None] * len(names)
    for i in sorted(range(len(names)), key=lambda k: (pts[k][0], -pts[k][1])):
        best = None  # (cost, offset, text box)
        for dx, dy in _OFFSETS:
            t = ax.annotate(names[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy),
                            fontsize=fontsize, ha="left" if dx >= 0 else "right", va="bottom")
            bb = t.get_window_extent(renderer)
            t.remove()
            box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
            cost = sum(_overlap(box, o) for o in taken)
            cost += 50 * (max(0, frame.x0 - box[0]) + max(0, box[2] - frame.x1)
                          + max(0, frame.y0 - box[1]) + max(0, box[3] - frame.y1))  # outside the axes
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), (bb.x0, bb.y0, bb.x1, bb.y1), box)
            if cost == 0:
                break
        _, (dx, dy), raw, box = best
        far = math.hypot(dx, dy) > 20  # points: beyond the nearest ring, say which point it names
        ax.annotate(names[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy),
                    fontsize=fontsize, ha="left" if dx >= 0 else "right", va="bottom",
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if far else None)
        taken.append(box)
        boxes[i] = raw
    return boxes


def use_log_x(xs: list[float]) -> bool:
    """A log x axis when the positive values span more than :data:`LOG_RANGE` times.

    Example:
        >>> use_log_x([0.015, 0.7]), use_log_x([0.08, 0.97])
        (True, False)
    """
    pos = [x for x in xs if x > 0]
    return bool(pos) and max(pos) / min(pos) > LOG_RANGE


def _readable_log_ticks(ax) -> None:
    """Ticks written as plain numbers (0.05, 0.2, 1), at 1, 2 and 5 times each power of ten
    over up to 3 decades: the default 10^-2, 10^-1 leaves a range of 20 to 100x with one or
    two labels. Wider ranges keep one tick per decade, so labels never crowd."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) <= 3.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def pareto_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write pareto_latency.png and pareto_size.png; returns the paths written.

    The frontier is marked, the baseline (``results["baseline"]``, else the first variant)
    drawn as a black diamond, every point labelled without overlap, and the x axis is
    logarithmic when its values span more than :data:`LOG_RANGE` times.
    """
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and CI
    import matplotlib.pyplot as plt

    from edgeopt.report.summary import baseline_row

    variants = [v for v in results.get("variants", []) if (v.get("accuracy") or {}).get("top1") is not None]
    if not variants:
        return []
    base = baseline_row(results)
    axes = [
        ("pareto_latency.png", "batch-1 median latency (ms)", lambda v: ((v.get("latency") or {}).get("batch1") or {}).get("median_ms")),
        ("pareto_size.png", "size on disk (MB, 10^6 bytes)", lambda v: (v.get("size") or {}).get("bytes", 0) / 1e6),
    ]
    written = []
    for fname, xlabel, xf in axes:
        pts = [(xf(v), 100 * v["accuracy"]["top1"], v.get("name", "?"), v is base) for v in variants]
        pts = [p for p in pts if p[0] is not None and p[0] > 0]
        if not pts:
            continue
        front = set(pareto_front([(x, y) for x, y, _, _ in pts]))
        fig, ax = plt.subplots(figsize=(7, 5))
        xs = [p[0] for p in pts]
        log = use_log_x(xs)
        if log:
            ax.set_xscale("log")
        for i, (x, y, _, is_base) in enumerate(pts):
            if is_base:
                ax.scatter([x], [y], marker="D", s=60, color="black", zorder=4, label="baseline")
            else:
                ax.scatter([x], [y], color="C3" if i in front else "C0", zorder=3)
        fx = sorted((pts[i][0], pts[i][1]) for i in front)
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "--", color="C3", alpha=0.6, label="Pareto front")
        # room for labels: a margin in the axis' own scale, then fixed limits for the placer
        if log:
            ax.set_xlim(min(xs) / 1.6, max(xs) * 2.5)
            _readable_log_ticks(ax)
        else:
            span = (max(xs) - min(xs)) or max(xs)
            ax.set_xlim(max(0.0, min(xs) - 0.1 * span), max(xs) + 0.35 * span)
        ys = [p[1] for p in pts]
        yspan = (max(ys) - min(ys)) or 1.0
        ax.set_ylim(min(ys) - 0.15 * yspan, min(max(ys) + 0.2 * yspan, 100.5))
        ax.set_xlabel(xlabel + (" (log scale)" if log else ""))
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3, which="both" if log else "major")
        legend = ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        lb = legend.get_window_extent(fig.canvas.get_renderer())
        place_labels(ax, xs, ys, [p[2] for p in pts], avoid=[(lb.x0, lb.y0, lb.x1, lb.y1)])
        path = out_dir / fname
        write_with_atomic(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        written.append(path)
    return written
