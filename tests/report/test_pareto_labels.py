"""Every point of a Pareto plot is labelled, no two labels overlap, and the x axis is
logarithmic exactly when the values span more than 20x."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from edgeopt.report import plots
from edgeopt.report.plots import _overlap, pareto_plots, place_labels, use_log_x


def test_ten_close_points_get_ten_labels_that_do_not_overlap():
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = [0.030, 0.031, 0.032, 0.030, 0.033, 0.034, 0.031, 0.035, 0.036, 0.6]
    ys = [97.7, 97.7, 97.75, 97.8, 97.7, 97.72, 97.78, 97.74, 97.7, 98.6]
    ax.scatter(xs, ys)
    ax.set_xlim(0, 0.8)
    ax.set_ylim(97.5, 98.8)
    boxes = place_labels(ax, xs, ys, [f"variant number {i}" for i in range(10)])
    assert len(boxes) == 10 and all(b is not None for b in boxes)
    for a, b in itertools.combinations(boxes, 2):
        assert _overlap(a, b) == 0, (a, b)
    # no label covers a marker either (4 px half-size, as the placer assumes)
    for x, y in zip(xs, ys):
        px, py = ax.transData.transform((x, y))
        assert all(_overlap(b, (px - 4, py - 4, px + 4, py + 4)) == 0 for b in boxes)
    # placing again gives the same boxes: deterministic
    fig2, ax2 = plt.subplots(figsize=(7, 5))
    ax2.scatter(xs, ys)
    ax2.set_xlim(0, 0.8)
    ax2.set_ylim(97.5, 98.8)
    assert place_labels(ax2, xs, ys, [f"variant number {i}" for i in range(10)]) == boxes
    plt.close(fig)
    plt.close(fig2)


def test_overlap_is_the_shared_area_of_two_boxes():
    assert _overlap((0, 0, 10, 10), (5, 5, 20, 20)) == 25
    assert _overlap((0, 0, 10, 10), (10, 0, 20, 10)) == 0  # touching edges share nothing


def test_log_axis_threshold_is_20x():
    assert use_log_x([1.0, 20.0]) is False and use_log_x([1.0, 20.1]) is True
    assert use_log_x([0.015, 0.689]) is True  # 46x
    assert use_log_x([0.08, 0.973]) is False  # 12x
    assert use_log_x([]) is False and use_log_x([0.0, 5.0]) is False  # a zero is never plotted


def test_plots_of_the_report_are_log_only_when_wide_and_labels_clear_each_other_and_the_legend(
        tmp_path, results, monkeypatch):
    from PIL import Image

    axes, placed = [], []
    real_subplots, real_place = plt.subplots, plots.place_labels

    def subplots(*a, **k):
        fig, ax = real_subplots(*a, **k)
        axes.append(ax)
        return fig, ax

    def place(ax, xs, ys, names, **k):
        boxes = real_place(ax, xs, ys, names, **k)
        placed.append((names, boxes, k.get("avoid") or []))
        return boxes

    monkeypatch.setattr(plt, "subplots", subplots)
    monkeypatch.setattr(plots, "place_labels", place)
    paths = pareto_plots(results, tmp_path)  # latency 0.015..0.689 ms: 46x -> log; size 0.08..0.973 MB: 12x
    assert [p.name for p in paths] == ["pareto_latency.png", "pareto_size.png"]
    assert all(Image.open(p).size == (770, 550) for p in paths)  # 7 x 5 inches at 110 dpi
    assert [ax.get_xscale() for ax in axes] == ["log", "linear"]
    # the log axis names its ticks as plain numbers, more than the two decades 0.01 and 0.1
    ticks = [t for t in axes[0].xaxis.get_majorticklocs() if axes[0].get_xlim()[0] <= t <= axes[0].get_xlim()[1]]
    assert len(ticks) >= 5
    assert axes[0].xaxis.get_major_formatter()(0.05, 0) == "0.05"
    # the baseline has its own marker and legend entry
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["baseline", "Pareto front"]
    assert len(placed) == 2
    for names, boxes, avoid in placed:
        assert len(names) == len(results["variants"]) == 7
        assert len(avoid) == 1  # the legend
        for a, b in itertools.combinations(boxes + avoid, 2):
            assert _overlap(a, b) == 0, (a, b)
