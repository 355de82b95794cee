"""Every point of a Pareto plot is labelled, and no two labels overlap."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from edgeopt.report.plots import _overlap, pareto_plots, place_labels  # noqa: E402


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
    plt.close(fig)


def test_the_x_axis_is_logarithmic_only_when_the_range_is_wide(tmp_path, results):
    from PIL import Image

    paths = pareto_plots(results, tmp_path)  # latency 0.015..0.689 ms: 46x -> log; size 12x -> linear
    assert [p.name for p in paths] == ["pareto_latency.png", "pareto_size.png"]
    assert all(Image.open(p).size[0] >= 700 for p in paths)
    import edgeopt.report.plots as plots

    scales = []
    real = plt.subplots

    def spy(*a, **k):
        fig, ax = real(*a, **k)
        scales.append(ax)
        return fig, ax

    plots_plt = __import__("matplotlib.pyplot", fromlist=["subplots"])
    plots_plt.subplots = spy
    try:
        plots.pareto_plots(results, tmp_path)
    finally:
        plots_plt.subplots = real
    assert [ax.get_xscale() for ax in scales] == ["log", "linear"]
