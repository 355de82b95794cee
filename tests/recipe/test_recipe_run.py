"""A recipe runs end to end on digits, caches its steps, and resumes after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeopt.recipe import load_recipe, plan, run_recipe

RECIPE = """
name: tiny
data: {{name: digits}}
baseline:
  model: {{name: simple_cnn}}
  train: {{epochs: {epochs}, batch_size: 64, lr: 0.05, progress: false}}
target: {{formats: [onnx], latency_runs: 5, warmup: 1, throughput_batch: 0, memory: false}}
constraints: {{max_drop: 5.0}}
variants:
  int8:
    - quantize: {{backend: onnxruntime, calibration_samples: 128}}
  pruned:
    - prune: {{method: structured, ratio: 0.5}}
    - finetune: {{epochs: {ft}, lr: 0.02, progress: false}}
  pruned int8:
    - prune: {{method: structured, ratio: 0.5}}
    - finetune: {{epochs: {ft}, lr: 0.02, progress: false}}
    - quantize: {{backend: onnxruntime, calibration_samples: 128}}
"""


def _recipe(tmp_path: Path, epochs: int = 4, ft: int = 2) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(RECIPE.format(epochs=epochs, ft=ft) + f"out_dir: {tmp_path / 'out'}\n")
    return p


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    r = load_recipe(_recipe(tmp))
    return tmp, r, run_recipe(r, progress=False)


def test_every_variant_is_measured_with_the_baseline_and_a_choice(tiny_run):
    tmp, _, res = tiny_run
    names = [v["name"] for v in res["variants"]]
    assert names == ["baseline torch", "baseline onnx", "int8", "pruned", "pruned int8"]
    assert res["baseline"] == "baseline torch"
    base = res["variants"][0]["accuracy"]["top1"]
    assert base >= 0.9
    by = {v["name"]: v for v in res["variants"]}
    assert by["baseline onnx"]["accuracy"]["top1"] == base  # exact ONNX export
    assert by["baseline onnx"]["parity"]["passed"]
    assert by["int8"]["precision"] == "int8" and by["int8"]["accuracy"]["top1"] >= base - 0.03
    # structured 50 %: the pruned file is smaller, and int8 smaller again
    assert by["pruned"]["size"]["bytes"] < 0.5 * by["baseline onnx"]["size"]["bytes"]
    assert by["pruned int8"]["size"]["bytes"] < 0.5 * by["pruned"]["size"]["bytes"]
    assert by["pruned"]["pruning"]["params_after"] < by["pruned"]["pruning"]["params_before"]
    assert [s["step"] for s in by["pruned int8"]["lineage"]] == ["train", "prune", "finetune", "quantize"]
    assert res["constraints"]["max_drop"] == 5.0
    assert res["choice"]["chosen"] in names
    for f in ("results.json", "report.md", "report.html", "baseline.safetensors", "baseline.json"):
        assert (tmp / "out" / f).is_file()


def test_a_second_run_reuses_every_step_and_measurement(tiny_run, capsys):
    tmp, r, first = tiny_run
    steps = sorted((tmp / "out" / "steps").glob("*/done.json"))
    # baseline + quantize + prune + finetune + quantize: the pruned variants share two steps
    assert len(steps) == 5
    mtimes = [p.stat().st_mtime_ns for p in steps]
    assert all(s["cached"] for v in plan(r) for s in v["steps"])
    again = run_recipe(r, progress=True)
    err = capsys.readouterr().err
    assert "running" not in err and err.count("cached") >= 5 + 5
    assert [p.stat().st_mtime_ns for p in steps] == mtimes
    assert [v["accuracy"]["top1"] for v in again["variants"]] == [v["accuracy"]["top1"] for v in first["variants"]]


def test_run_cli_dry_run_prints_the_plan(tiny_run, capsys):
    from _cli import run_cli

    tmp, _, _ = tiny_run
    code, out, _ = run_cli(capsys, "run", tmp / "tiny.yaml", "--dry-run")
    assert code == 0
    assert "pruned int8" in out and "cached" in out and "to run" not in out


def test_killing_a_run_midway_and_running_it_again_redoes_no_finished_step(tmp_path):
    recipe = _recipe(tmp_path, epochs=6, ft=12)
    cmd = [sys.executable, "-m", "edgeopt", "run", str(recipe)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    steps = tmp_path / "out" / "steps"
    deadline = time.time() + 240
    try:  # kill it while the fine-tuning (12 epochs) runs: baseline, quantize and prune are done
        while time.time() < deadline:
            if list(steps.glob("prune-*/done.json")) and list(steps.glob("finetune-*/train")):
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("the run never reached its fine-tuning step")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in steps.glob("*/done.json")}
    assert {n.split("-")[0] for n in finished} == {"baseline", "quantize", "prune"}
    assert not list(steps.glob("finetune-*/done.json"))
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    for name, mtime in finished.items():  # nothing finished was redone
        assert (steps / name / "done.json").stat().st_mtime_ns == mtime
    assert "baseline: cached" in second.stderr
    assert second.stderr.count(": cached (prune-") == 2  # both pruned variants reuse the one prune step
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(res["variants"]) == 5


def test_scan_then_prune_uses_the_scans_table_and_writes_no_copy_of_the_model(tmp_path):
    p = tmp_path / "scan.yaml"
    p.write_text(f"""
data: {{name: digits}}
out_dir: {tmp_path / 'out'}
baseline: {{model: {{name: simple_cnn}}, train: {{epochs: 2, batch_size: 64, lr: 0.05, progress: false}}}}
target: {{formats: [], latency_runs: 3, warmup: 1, throughput_batch: 0, memory: false}}
variants:
  scanned:
    - scan: {{method: unstructured, sparsities: [0.5, 0.9], samples: 64, threshold: 100.0}}
    - prune: {{method: unstructured, layer_ratios: scan}}
""")
    res = run_recipe(load_recipe(p), progress=False)
    (scan_dir,) = (tmp_path / "out" / "steps").glob("scan-*")
    assert not (scan_dir / "model.safetensors").exists()  # the baseline passes through
    row = next(v for v in res["variants"] if v["name"] == "scanned")
    # threshold 100 points: every scanned layer tolerates the largest sparsity tried
    table = json.loads((scan_dir / "done.json").read_text())["info"]["sensitivity"]["table"]
    assert table and set(table.values()) == {0.9}
    assert row["pruning"]["sparsity"] > 0.5
