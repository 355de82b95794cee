"""The demo pipeline end to end on the real digits data, and its step cache."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import ConfigError
from edgeopt.pipeline import EvalConfig, RunConfig, run


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = RunConfig(out_dir=str(out), eval=EvalConfig(latency_runs=100), progress=False)
    return out, cfg, run(cfg)


def test_demo_baseline_reaches_95_percent_on_digits_in_both_runtimes(demo_run):
    _, _, results = demo_run
    by_runtime = {v["runtime"]: v for v in results["variants"] if v["name"] in ("fp32 torch", "fp32 onnx")}
    assert set(by_runtime) == {"torch", "onnxruntime"}
    for v in by_runtime.values():
        assert v["accuracy"]["top1"] >= 0.95, v["accuracy"]
        assert v["latency"]["batch1"]["runs"] >= 100
        assert v["size"]["bytes"] > 0 and v["size"]["gzip_bytes"] > 0
        assert v["memory"]["peak_rss_mb"] > 0
        assert v["energy"]["total_uJ"] > 0
    onnx = by_runtime["onnxruntime"]
    assert onnx["parity"]["passed"] and onnx["parity"]["max_abs_diff"] <= 1e-4
    assert onnx["parity"]["top1_agreement"] == 1.0
    # the two runtimes classify the test split identically (parity on the whole split)
    assert onnx["accuracy"]["top1"] == by_runtime["torch"]["accuracy"]["top1"]


def test_demo_int8_variants_lose_at_most_1_point_and_agree_with_their_reference(demo_run):
    _, _, results = demo_run
    fp32 = next(v for v in results["variants"] if v["name"] == "fp32 torch")
    int8 = {v["name"]: v for v in results["variants"] if v["precision"] == "int8" and not v["name"].startswith("pruned")}
    assert set(int8) == {"int8 onnxruntime", "int8 torch-x86"}
    for v in int8.values():
        assert v["accuracy"]["top1"] >= fp32["accuracy"]["top1"] - 0.01, (v["name"], v["accuracy"])
        assert v["quantization"]["agreement"]["top1_agreement"] >= 0.99
        assert v["quantization"]["float_layers"] == []
        assert v["size"]["bytes"] <= 0.35 * fp32["size"]["bytes"]


def test_demo_pruned_variants_are_smaller_and_within_2_5_points(demo_run):
    out, _, results = demo_run
    by_name = {v["name"]: v for v in results["variants"]}
    fp32, parent = by_name["fp32 torch"], by_name["fp32 onnx"]
    pruned = by_name["pruned structured 50% onnx"]
    both = by_name["pruned structured 50% + int8 onnxruntime"]
    # half the channels of the middle layers: about a third of the parameters and MACs stay
    assert pruned["pruning"]["params_after"] <= 0.4 * pruned["pruning"]["params_before"]
    assert pruned["macs"]["total_macs"] <= 0.4 * parent["macs"]["total_macs"]
    assert pruned["size"]["bytes"] <= 0.4 * parent["size"]["bytes"]
    assert pruned["parity"]["passed"]
    assert pruned["accuracy"]["top1"] >= fp32["accuracy"]["top1"] - 0.025, pruned["accuracy"]
    assert both["accuracy"]["top1"] >= pruned["accuracy"]["top1"] - 0.01, both["accuracy"]
    assert both["size"]["bytes"] <= 0.35 * pruned["size"]["bytes"]
    assert (out / "artifacts" / f"{pruned['pruning']['checkpoint']}").is_file()
    assert any("per-layer channels" in f["title"] for f in results["figures"])


def test_demo_writes_results_and_report(demo_run):
    out, _, results = demo_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == results["schema_version"]
    assert len(on_disk["variants"]) == 6 and on_disk["machine"]
    report = (out / "report.md").read_text()
    assert "| fp32 torch |" in report and "| fp32 onnx |" in report and "| int8 onnxruntime |" in report
    assert "| pruned structured 50% onnx |" in report
    # the int8 weight/activation histograms and the pruning figures (channel bars, weights
    # before/after) are embedded in the report
    assert "## Figures" in report and len(on_disk["figures"]) == 4
    assert all((out / f["path"]).is_file() for f in on_disk["figures"])
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 2 + len(on_disk["figures"])
    assert (out / "report.html").stat().st_size > 1000
    assert (out / "pareto_latency.png").is_file()
    assert not list(out.rglob("*.tmp")), "no half-written files are left behind"


def test_rerun_reuses_the_finished_training_step(demo_run, capsys):
    _, cfg, results = demo_run
    again = run(cfg.replace(progress=True, eval=EvalConfig(latency_runs=5, memory=False)))
    assert "reusing finished training" in capsys.readouterr().err
    first = {v["runtime"]: v["accuracy"]["top1"] for v in results["variants"]}
    assert {v["runtime"]: v["accuracy"]["top1"] for v in again["variants"]} == first


def test_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown format"):
        RunConfig(formats=("no-such-format",))
