"""``optimize`` / ``edgeopt optimize`` end to end on a simple_cnn trained on real digits."""

from __future__ import annotations

import filecmp
import json

import pytest
from _cli import one_line, run_cli

from edgeopt.errors import ConfigError, UnsupportedModelError
from edgeopt.evaluate import Constraints
from edgeopt.optimize import OptimizeConfig, optimize

#: what keeps a run short: one pruning ratio, 1 fine-tuning epoch, 128 screening images, few runs
FAST = {"prune_ratios": [0.5], "finetune_epochs": 1, "screen_samples": 128, "screen_latency_runs": 10,
        "latency_runs": 20, "warmup": 3, "throughput_batch": 0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits_cnn):
    from edgeopt.models import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("opt") / "model", digits_cnn, lineage=[{"step": "train"}])


@pytest.fixture(scope="module")
def fp32(checkpoint):
    """The checkpoint's own top-1 on the test split and its torch eager batch-1 latency."""
    from edgeopt.jobs import evaluate_path
    from edgeopt.pipeline import EvalConfig

    row = evaluate_path(checkpoint, cfg=EvalConfig(latency_runs=20, memory=False),
                        progress=False)
    return row["accuracy"]["top1"], row["latency"]["batch1"]["median_ms"]


def _lat(row):
    return row["latency"]["batch1"]["median_ms"]


def test_optimize_chooses_a_fully_measured_variant_meeting_both_bounds(checkpoint, fp32, tmp_path):
    acc, lat = fp32  # measured 0.983 and ~0.6 ms here
    c = Constraints(max_latency_ms=10 * lat, min_accuracy=acc - 0.05)
    cfg = OptimizeConfig.from_dict({**FAST, "constraints": c.to_dict(), "out_dir": str(tmp_path / "out"),
                                    "teacher": str(checkpoint)})
    res = optimize(checkpoint, cfg, progress=False)
    r = res.results
    by_name = {v["name"]: v for v in r["variants"]}
    assert list(by_name) == ["fp32 torch", "fp32 onnx", "int8 onnxruntime", "int8 torch-x86",
                             "pruned structured 50% onnx", "pruned structured 50% + int8 onnxruntime"]
    assert r["baseline"] == "fp32 torch" and r["constraints"] == c.to_dict()
    assert res.exit_code == 0 and res.chosen == r["choice"]["chosen"] is not None
    chosen = by_name[res.chosen]
    # the chosen row is a full measurement: the whole split, the full latency runs, memory
    assert chosen["stage"] == "full" and chosen["accuracy"]["n"] == 359
    assert chosen["latency"]["batch1"]["runs"] == 20 and chosen["memory"]["delta_mb"] > 0
    assert chosen["accuracy"]["top1"] >= c.min_accuracy and _lat(chosen) <= c.max_latency_ms
    # highest top-1 among the full rows that meet both, ties to the lower latency
    meeting = [v for v in r["variants"] if v["stage"] == "full" and v["accuracy"]["top1"] >= c.min_accuracy
               and _lat(v) <= c.max_latency_ms]
    assert sorted(r["choice"]["meets"]) == sorted(v["name"] for v in meeting)
    best = max(v["accuracy"]["top1"] for v in meeting)
    assert chosen["accuracy"]["top1"] == best
    assert _lat(chosen) == min(_lat(v) for v in meeting if v["accuracy"]["top1"] == best)
    # the screen: 128 of the 359 test images and 10 timed runs, no memory probe
    for v in r["variants"]:
        assert v["screen"]["samples"] == 128 and v["notes"] == [n for n in v["notes"] if "not built" not in n]
        if v["stage"] == "screen":
            assert v["accuracy"]["n"] == 128 and v["latency"]["batch1"]["runs"] == 10 and v["memory"] is None
    assert sorted(r["screening"]["promising"]) == sorted(v["name"] for v in r["variants"] if v["stage"] == "full")
    # the pruned models were fine-tuned with the checkpoint as KD teacher
    pruned = by_name["pruned structured 50% onnx"]["pruning"]
    assert pruned["recovery"]["teacher_checkpoint"] == str(checkpoint)
    assert pruned["params_after"] <= 0.4 * pruned["params_before"]
    # the chosen artifact is kept byte for byte, its sidecar names the new file
    assert res.chosen_path.name.startswith("chosen.") and filecmp.cmp(res.chosen_path, chosen["artifact"])
    from edgeopt.artifact import Artifact

    assert Artifact.load(res.chosen_path).spec.num_classes == 10
    saved = json.loads(res.results_path.read_text())
    assert saved["choice"] == r["choice"] and saved["chosen_artifact"] == res.chosen_path.name
    assert (tmp_path / "out" / "report.md").is_file()
    assert res.message.startswith(f"chosen: {res.chosen} — meets max_latency_ms (")


def test_cli_impossible_bounds_exit_3_and_name_the_failing_constraints(checkpoint, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump(FAST))
    out = tmp_path / "out"
    (out / "chosen.onnx").parent.mkdir()
    (out / "chosen.onnx").write_bytes(b"an older run's choice")
    code, stdout, _ = run_cli(capsys, "optimize", checkpoint, "--max-latency-ms", "1e-6", "--min-accuracy", "0.999",
                              "--out-dir", out, "--config", cfg)
    assert code == 3, stdout
    assert "no variant meets the constraints: max_latency_ms fails by" in stdout
    assert "min_accuracy fails by" in stdout
    r = json.loads((out / "results.json").read_text())
    choice = r["choice"]
    assert choice["chosen"] is None and choice["meets"] == []
    full = {v["name"]: v for v in r["variants"] if v["stage"] == "full"}
    # the 3 closest overall, plus the screened candidate closest to each failing bound
    assert r["screening"]["fallback"] and sorted(full) == sorted(r["screening"]["promising"]) and 3 <= len(full) <= 5
    def screen_top1(v):  # a fully measured row keeps its screening figure under "screen"
        return v["screen"].get("top1") if v["stage"] == "full" else (v.get("accuracy") or {}).get("top1")

    best_screen = max((v for v in r["variants"] if screen_top1(v) is not None), key=screen_top1)
    assert best_screen["name"] in full  # the candidate closest to min_accuracy was measured fully
    lat, acc = choice["failures"]
    assert (lat["constraint"], lat["limit"], lat["unit"]) == ("max_latency_ms", 1e-6, "ms")
    assert lat["closest"] == min(full, key=lambda n: _lat(full[n]))
    assert lat["value"] == pytest.approx(_lat(full[lat["closest"]]), rel=1e-5)
    assert lat["by"] == pytest.approx(lat["value"] - 1e-6, rel=1e-5)
    assert (acc["constraint"], acc["limit"], acc["unit"]) == ("min_accuracy", 0.999, "fraction")
    assert acc["value"] == pytest.approx(max(v["accuracy"]["top1"] for v in full.values()), rel=1e-5)
    assert acc["by"] == pytest.approx(0.999 - acc["value"], rel=1e-4)
    assert f"(closest: {lat['closest']})" in stdout and f"(closest: {acc['closest']})" in stdout
    assert not list(out.glob("chosen.*"))  # the older choice is gone: nothing meets now


def test_a_candidate_that_fails_to_build_is_a_row_note(checkpoint, tmp_path, monkeypatch):
    import edgeopt.quantize

    real = edgeopt.quantize.quantize

    def quantize(model, cfg, *a, **k):
        if cfg.backend == "torch":
            raise UnsupportedModelError("no x86 int8 kernels here")
        return real(model, cfg, *a, **k)

    monkeypatch.setattr(edgeopt.quantize, "quantize", quantize)
    cfg = OptimizeConfig.from_dict({**FAST, "prune_ratios": [], "candidates": ["fp32 onnx", "int8 torch-x86"],
                                    "constraints": {"min_accuracy": 0.5}, "out_dir": str(tmp_path), "memory": False})
    res = optimize(checkpoint, cfg, progress=False)
    rows = {v["name"]: v for v in res.results["variants"]}
    bad = rows["int8 torch-x86"]
    assert bad["stage"] == "screen" and bad["accuracy"] is None
    assert bad["notes"] == ["not built: UnsupportedModelError: no x86 int8 kernels here"]
    assert res.chosen == "fp32 onnx" and res.results["baseline"] == "fp32 onnx"
    assert res.chosen_path.name == "chosen.onnx" and (tmp_path / "chosen.onnx.edgeopt.json").is_file()


def test_config_needs_a_constraint_and_a_budget_fills_the_rest():
    with pytest.raises(ConfigError, match="at least one constraint"):
        OptimizeConfig()
    q = OptimizeConfig(constraints=Constraints(max_size_mb=1.0), budget="quick")
    assert (q.prune_ratios, q.finetune_epochs, q.screen_samples, q.latency_runs) == ((0.5,), 1, 256, 50)
    f = OptimizeConfig(constraints=Constraints(max_size_mb=1.0), finetune_epochs=3)
    assert (f.prune_ratios, f.finetune_epochs, f.latency_runs) == ((0.3, 0.5), 3, 100)
    with pytest.raises(ConfigError, match="finetune_epochs >= 1"):
        OptimizeConfig(constraints=Constraints(max_size_mb=1.0), teacher="t.safetensors", finetune_epochs=0)
    with pytest.raises(ConfigError, match="max_memory_mb needs memory"):
        OptimizeConfig(constraints=Constraints(max_memory_mb=10.0), memory=False)
    with pytest.raises(ConfigError, match="unknown candidate"):
        OptimizeConfig(constraints=Constraints(max_size_mb=1.0), candidates=("int4 tflite",))
    # the screen relaxes latency by 1.2x and accuracy by 1 point, and drops memory (not probed)
    s = OptimizeConfig(constraints=Constraints(max_latency_ms=2.0, min_accuracy=0.95, max_memory_mb=9.0,
                                               max_drop=0.5)).screen_constraints()
    assert (s.max_latency_ms, s.max_memory_mb, s.max_drop) == (2.4, None, 1.5)
    assert s.min_accuracy == pytest.approx(0.94)


def test_cli_dump_config_and_bad_input_before_any_work(checkpoint, capsys, tmp_path):
    import yaml

    code, out, _ = run_cli(capsys, "optimize", checkpoint, "--max-latency-ms", "2", "--min-accuracy", "0.95",
                           "--budget", "quick", "--threads", "2", "--dump-config")
    d = yaml.safe_load(out)
    assert code == 0 and d["constraints"]["max_latency_ms"] == 2.0 and d["constraints"]["min_accuracy"] == 0.95
    assert (d["budget"], d["threads"], d["prune_ratios"]) == ("quick", 2, [0.5])
    code, _, err = run_cli(capsys, "optimize", checkpoint, "--min-accuracy", "95")
    assert code == 2
    assert one_line(err) == ("ConfigError: Constraints.min_accuracy=95.0 must be a fraction, "
                             "e.g. 0.9 for 90 %")
    code, _, err = run_cli(capsys, "optimize", tmp_path / "missing.safetensors", "--max-latency-ms", "1",
                           "--out-dir", tmp_path / "o")
    assert code == 2 and "missing.safetensors" in one_line(err)
    assert not (tmp_path / "o").exists()  # nothing is created before the checkpoint loads
