"""The demo (the shipped recipe recipes/demo.yaml) end to end on the real digits data."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import ConfigError
from edgeopt.recipe import parse_recipe, run_recipe
from edgeopt.recipe.demo import demo_recipe


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    recipe = demo_recipe(out_dir=str(out))
    return out, recipe, run_recipe(recipe, progress=False)


def test_demo_baseline_reaches_95_percent_on_digits_in_both_runtimes(demo_run):
    _, _, results = demo_run
    by_runtime = {v["runtime"]: v for v in results["variants"] if v["name"] in ("baseline torch", "baseline onnx")}
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
    fp32 = next(v for v in results["variants"] if v["name"] == "baseline torch")
    int8 = {v["name"]: v for v in results["variants"]
            if v["precision"] == "int8" and not v["name"].startswith(("pruned", "student"))}
    assert set(int8) == {"int8", "int8 torch"}
    for v in int8.values():
        assert v["accuracy"]["top1"] >= fp32["accuracy"]["top1"] - 0.01, (v["name"], v["accuracy"])
        assert v["quantization"]["agreement"]["top1_agreement"] >= 0.99
        assert v["quantization"]["float_layers"] == []
        assert v["size"]["bytes"] <= 0.35 * fp32["size"]["bytes"]


def test_demo_pruned_variants_are_smaller_and_within_2_5_points(demo_run):
    out, _, results = demo_run
    by_name = {v["name"]: v for v in results["variants"]}
    fp32, parent = by_name["baseline torch"], by_name["baseline onnx"]
    pruned = by_name["pruned 50"]
    both = by_name["pruned 50 + int8"]
    # half the channels of the middle layers: about a third of the parameters and MACs stay
    assert pruned["pruning"]["params_after"] <= 0.4 * pruned["pruning"]["params_before"]
    assert pruned["macs"]["total_macs"] <= 0.4 * parent["macs"]["total_macs"]
    assert pruned["size"]["bytes"] <= 0.4 * parent["size"]["bytes"]
    assert pruned["parity"]["passed"]
    assert pruned["accuracy"]["top1"] >= fp32["accuracy"]["top1"] - 0.025, pruned["accuracy"]
    assert both["accuracy"]["top1"] >= pruned["accuracy"]["top1"] - 0.01, both["accuracy"]
    assert both["size"]["bytes"] <= 0.35 * pruned["size"]["bytes"]
    # the two variants share the pruning step (one folder, one checkpoint)
    assert len(list((out / "steps").glob("prune-*/model.safetensors"))) == 1
    assert [s["step"] for s in both["lineage"]] == ["train", "prune", "quantize"]
    assert any("per-layer channels" in f["title"] for f in results["figures"])


def test_demo_distilled_student_is_measured_beside_the_same_student_trained_alone(demo_run):
    import math
    import statistics

    from edgeopt.distill import VERDICTS

    out, _, results = demo_run
    by_name = {v["name"]: v for v in results["variants"]}
    fp32, fp32_onnx = by_name["baseline torch"], by_name["baseline onnx"]
    student, alone = by_name["student"], by_name["student (trained alone)"]
    d, b = student["distillation"], alone["distillation"]
    assert (d["role"], b["role"]) == ("student", "baseline")
    assert (d["student"], d["teacher"], d["method"], d["epochs"], d["seeds"]) == (
        "cnn_student", "simple_cnn", "response", 6, 3)
    assert d["teacher_acc"] == fp32["accuracy"]["top1"]  # the teacher is the run's trained model
    # about a tenth of the teacher's parameters in the ONNX files (25,866 vs 241,546: BN folded)
    assert student["size"]["params"] == alone["size"]["params"] <= 0.11 * fp32_onnx["size"]["params"]
    assert student["parity"]["passed"] and alone["parity"]["passed"]
    # each row measures the ONNX file of the model distill() tested (the first seed's)
    assert student["accuracy"]["top1"] == d["test_acc"] and alone["accuracy"]["top1"] == b["test_acc"]
    assert min(d["student_mean"], d["baseline_mean"]) >= 0.95, d  # measured about 0.97 each
    # gain and verdict follow distill.summarize: twice the combined spread of the 3 seeds
    assert math.isclose(d["gain"], d["student_mean"] - d["baseline_mean"], abs_tol=1e-12)
    assert math.isclose(d["threshold"], 2 * math.hypot(d["student_std"], d["baseline_std"]), abs_tol=1e-12)
    assert d["verdict"] in VERDICTS and d["verdict"] == (
        "gain" if d["gain"] > d["threshold"] else "loss" if d["gain"] < -d["threshold"] else "no measurable gain")
    assert d["note"] is None  # the one-seed note is gone with 3 seeds
    (summary_path,) = (out / "steps").glob("distill-*/distill/distill.json")
    summary = json.loads(summary_path.read_text())
    accs = [r["student"]["test_acc"] for r in summary["runs"]]
    assert len(accs) == 3 and math.isclose(statistics.fmean(accs), d["student_mean"], abs_tol=1e-12)
    step = summary_path.parent.parent
    assert (step / "model.safetensors").is_file() and (step / "extra0.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert "## Distillation" in report and f"verdict: {d['verdict']}." in report
    assert f"gain {100 * d['gain']:+.2f} points (threshold {100 * d['threshold']:.2f})" in report
    assert "<h2>Distillation</h2>" in (out / "report.html").read_text()


def test_demo_writes_results_and_report(demo_run):
    out, _, results = demo_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == results["schema_version"]
    assert len(on_disk["variants"]) == 8 and on_disk["machine"]
    assert on_disk["recipe"]["name"] == "demo" and on_disk["baseline"] == "baseline torch"
    report = (out / "report.md").read_text()
    for name in ("baseline torch", "baseline onnx", "int8", "int8 torch", "pruned 50", "pruned 50 + int8",
                 "student", "student (trained alone)"):
        assert f"| {name}" in report, name
    # the demo's constraints (max_drop 1 point, max 0.5 MB) name a variant, and it meets them
    choice = on_disk["choice"]
    assert choice["chosen"] in choice["meets"] and choice["failures"] == []
    chosen = next(v for v in on_disk["variants"] if v["name"] == choice["chosen"])
    base = on_disk["variants"][0]["accuracy"]["top1"]
    assert 100 * (base - chosen["accuracy"]["top1"]) <= 1.0 and chosen["size"]["bytes"] <= 0.5e6
    assert choice["chosen"] in report
    # the int8 weight/activation histograms and the pruning figures (channel bars, weights
    # before/after) are embedded in the report
    assert "## Figures" in report and len(on_disk["figures"]) == 4
    assert all((out / f["path"]).is_file() for f in on_disk["figures"])
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 2 + len(on_disk["figures"])
    assert (out / "report.html").stat().st_size > 1000
    assert (out / "pareto_latency.png").is_file()
    assert not list(out.rglob("*.tmp")), "no half-written files are left behind"


def test_rerun_reuses_every_finished_step(demo_run, capsys):
    out, recipe, results = demo_run
    again = run_recipe(recipe, progress=True)
    err = capsys.readouterr().err
    assert "baseline: cached" in err and ": running" not in err
    assert [v["accuracy"]["top1"] for v in again["variants"]] == [v["accuracy"]["top1"] for v in results["variants"]]


def test_distill_entries_are_checked_before_any_work():
    base = {"data": {"name": "digits"}, "baseline": {"train": {"epochs": 1}}}
    with pytest.raises(ConfigError, match="needs 'student'"):
        parse_recipe({**base, "variants": {"s": [{"distill": {"method": "response"}}]}})
    with pytest.raises(ConfigError, match="alpha"):
        parse_recipe({**base, "variants": {"s": [{"distill": {"student": "cnn_student", "alpha": 2.0}}]}})


def test_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown format"):
        parse_recipe({"data": {"name": "digits"}, "target": {"formats": ["no-such-format"]}, "variants": {}})
