"""The job layer's pieces: the slower-than-parent warning, default names, figures."""

from __future__ import annotations

from pathlib import Path

from edgeopt.prune import PruneConfig, prune
from edgeopt.prune.jobs import default_out, lineage_step, slower_warning


def _row(ms: float) -> dict:
    return {"latency": {"batch1": {"median_ms": ms}}}


def test_a_structured_variant_slower_than_its_parent_is_warned_about_in_one_line():
    warn = slower_warning(_row(1.0), _row(1.25), "structured")
    assert warn is not None and "1.250 vs 1.000 ms" in warn and "\n" not in warn
    assert slower_warning(_row(1.0), _row(0.6), "structured") is None
    # unstructured zeros never promise speed: no warning to give
    assert slower_warning(_row(1.0), _row(1.25), "unstructured") is None
    assert slower_warning({}, _row(1.0), "structured") is None


def test_default_out_names_the_method_and_amount():
    p = default_out("runs/x/best.safetensors", PruneConfig(method="structured", ratio=0.5, target="macs"))
    assert p == Path("runs/x/best_pruned_structured50_macs.safetensors")
    assert default_out("m", PruneConfig(ratio=0.7)).name == "m_pruned_unstructured70.safetensors"


def test_lineage_step_records_what_was_removed(digits_cnn, tmp_path):
    from edgeopt.prune.plots import prune_figures

    res = prune(digits_cnn, PruneConfig(method="structured", ratio=0.5))
    step = lineage_step(res)
    assert step["step"] == "prune" and step["importance"] == "l1"
    assert step["params_after"] == sum(p.numel() for p in res.model.parameters()) < step["params_before"]
    assert 0.0 < step["macs_ratio"] < 0.5  # half the channels of consecutive layers: ~1/4 of their MACs
    figs = prune_figures(digits_cnn, res, tmp_path, "s")
    assert [f["path"] for f in figs] == ["s_layers.png", "s_weights.png"]
    assert all((tmp_path / f["path"]).stat().st_size > 1000 for f in figs)
