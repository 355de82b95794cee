"""`edgeopt distill` on real digits: files written, numbers recorded, sweeps, configs, one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from _cli import one_line, run_cli

SUMMARY_KEYS = {"student_mean", "student_std", "baseline_mean", "baseline_std", "gain", "threshold", "verdict"}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, digits_cnn):
    """The session's simple_cnn (test accuracy >= 0.95 on digits) as an edgeopt checkpoint."""
    from edgeopt.models import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("distill_cli") / "teacher", digits_cnn)


def _acc(model, data) -> float:
    x, y = data.samples(10_000, split="test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_distill_writes_summary_and_checkpoints_that_reload(capsys, teacher_ckpt, digits_data, digits_cnn, tmp_path):
    from edgeopt.models import load_checkpoint

    out = tmp_path / "kd"
    code, stdout, err = run_cli(capsys, "distill", "cnn_student", "--teacher", teacher_ckpt, "--epochs", "3",
                                "--lr", "0.1", "--seeds", "2", "--out-dir", out)
    assert code == 0, err
    rep = json.loads((out / "distill.json").read_text())
    s = rep["summary"]
    assert SUMMARY_KEYS <= set(s) and s["seeds"] == 2 and len(rep["runs"]) == 2
    accs = [r["student"]["test_acc"] for r in rep["runs"]]
    base = [r["baseline"]["test_acc"] for r in rep["runs"]]
    assert s["student_mean"] == pytest.approx(sum(accs) / 2) and s["baseline_mean"] == pytest.approx(sum(base) / 2)
    assert s["gain"] == pytest.approx(s["student_mean"] - s["baseline_mean"])
    assert s["threshold"] == pytest.approx(2 * (s["student_std"] ** 2 + s["baseline_std"] ** 2) ** 0.5)
    assert s["verdict"] == ("gain" if s["gain"] > s["threshold"] else "loss" if s["gain"] < -s["threshold"]
                            else "no measurable gain")
    assert rep["teacher_acc"] == pytest.approx(_acc(digits_cnn, digits_data)) and rep["teacher_acc"] >= 0.95
    assert min(accs + base) >= 0.85  # 3 epochs of a 24k-parameter CNN on digits (measured 0.88 to 0.94)
    assert rep["config"]["epochs"] == 3 and rep["student"]["params"] == 24_058
    assert rep["command"] == (f"edgeopt distill cnn_student --teacher {teacher_ckpt} --epochs 3 --lr 0.1 --seeds 2 "
                              f"--out-dir {out}")
    for arm, acc in (("student", accs[0]), ("baseline", base[0])):  # the first seed's model is saved
        model, side = load_checkpoint(out / f"{arm}.safetensors")
        assert _acc(model, digits_data) == pytest.approx(acc, abs=1e-9)
        assert side["arch"]["name"] == "cnn_student" and side["metrics"]["test_acc"] == pytest.approx(acc)
    assert load_checkpoint(out / "student.safetensors")[1]["lineage"][-1]["step"] == "distill"
    md = (out / "distill.md").read_text()
    assert f"{100 * s['student_mean']:.2f} ± {100 * s['student_std']:.2f}" in md and s["verdict"] in md
    assert s["verdict"] in stdout and f"{100 * s['baseline_mean']:.2f}" in stdout and "distill.json" in stdout


def test_a_comma_list_is_a_sweep_with_csv_and_heatmap(capsys, teacher_ckpt, tmp_path):
    out = tmp_path / "sweep"
    code, _, err = run_cli(capsys, "distill", "cnn_student", "--teacher", teacher_ckpt, "--temperature", "2,4",
                           "--alpha", "0.5,0.9", "--epochs", "1", "--max-steps", "3", "--out-dir", out, "--json")
    assert code == 0, err
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["temperature"]), float(r["alpha"])) for r in rows] == [(2, 0.5), (2, 0.9), (4, 0.5), (4, 0.9)]
    assert all(0.0 <= float(r["student_mean"]) <= 1.0 and r["verdict"] for r in rows)
    assert (out / "sweep_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((out / "distill.json").read_text())
    best = max(rows, key=lambda r: float(r["student_mean"]))
    assert rep["kind"] == "sweep" and rep["summary"]["student_mean"] == pytest.approx(float(best["student_mean"]), abs=1e-6)
    assert len(rep["runs"]) == 4 + 1  # one seed per cell, plus the baseline


def test_dump_config_reads_back_with_config(capsys, teacher_ckpt, tmp_path):
    code, dumped, err = run_cli(capsys, "distill", "--preset", "mnist-cnn", "--teacher", teacher_ckpt, "--method",
                                "feature", "--alpha", "0.5", "--epochs", "3", "--dump-config")
    assert code == 0, err
    job = yaml.safe_load(dumped)
    assert job["student"] is None and job["preset"] == "mnist-cnn"
    d = job["distill"]
    assert (d["method"], d["temperature"], d["alpha"], d["epochs"], d["feature_pairs"]) == \
        ("feature", 4.0, 0.5, 3, [["block3", "block3"]])  # preset, flag, flag, preset's layers
    path = tmp_path / "job.yaml"
    path.write_text(dumped)
    code, again, err = run_cli(capsys, "distill", "--config", path, "--dump-config")
    assert code == 0 and again == dumped, err
    code, changed, _ = run_cli(capsys, "distill", "--config", path, "--epochs", "5", "--dump-config")
    assert yaml.safe_load(changed)["distill"]["epochs"] == 5  # a flag wins over the file


def _fmnist_teacher(tmp_path):
    from edgeopt.models import create_model, save_checkpoint
    from edgeopt.spec import ModelSpec

    spec = ModelSpec((1, 28, 28), 10, (0.286,), (0.353,), dataset="fashion-mnist")
    return save_checkpoint(tmp_path / "fm_teacher", create_model("cnn_teacher", spec))


@pytest.mark.parametrize("case", ["no teacher", "unknown preset", "unknown method", "wrong layer",
                                  "teacher of another dataset", "student of another dataset", "out-dir is a file"])
def test_bad_input_is_one_line_and_exit_2_before_any_work(capsys, teacher_ckpt, tmp_path, case):
    out = tmp_path / "out"
    args = {
        "no teacher": ["cnn_student", "--data", "digits"],
        "unknown preset": ["cnn_student", "--teacher", teacher_ckpt, "--preset", "mnist"],
        "unknown method": ["cnn_student", "--teacher", teacher_ckpt, "--method", "hinton"],
        "wrong layer": ["cnn_student", "--teacher", teacher_ckpt, "--method", "feature", "--feature-pairs",
                        "block3:features.9"],
        "teacher of another dataset": ["cnn_student", "--teacher", None, "--data", "digits"],
        "student of another dataset": [None, "--teacher", teacher_ckpt],
        "out-dir is a file": ["cnn_student", "--teacher", teacher_ckpt],
    }[case]
    if None in args:
        args[args.index(None)] = _fmnist_teacher(tmp_path)
    if case == "out-dir is a file":
        out = tmp_path / "file.txt"
        out.write_text("x")
    code, _, err = run_cli(capsys, "distill", *args, "--epochs", "1", "--out-dir", out)
    line = one_line(err)
    assert code == 2, err
    expect = {"no teacher": "needs a teacher", "unknown preset": "Did you mean 'mnist-cnn'",
              "unknown method": "must be one of response, dkd", "wrong layer": "the teacher has no layer 'features.9'",
              "teacher of another dataset": "expects 28x28 images but digits has 8x8",
              "student of another dataset": "was trained on fashion-mnist",
              "out-dir is a file": "is a file, not a folder"}[case]
    assert expect in line, line
    assert not out.is_dir()  # nothing was trained or written


def test_help_and_listing_name_every_method_and_preset(capsys):
    from edgeopt.cli.distill_cmd import METHOD_NAMES, PRESET_NAMES
    from edgeopt.distill import METHODS
    from edgeopt.distill.presets import list_presets

    assert METHOD_NAMES == ", ".join(METHODS) and PRESET_NAMES == ", ".join(list_presets())
    code, text, _ = run_cli(capsys, "distill", "--help")
    assert code == 0 and "Example: edgeopt distill" in text
    for flag in ("--teacher", "--method", "--preset", "--temperature", "--alpha", "--feature-pairs", "--assistants",
                 "--generations", "--peers", "--seeds", "--no-baseline", "--dump-config", "--max-steps"):
        assert flag in text, flag
    code, listing, _ = run_cli(capsys, "presets", "--json")
    rows = json.loads(listing)
    assert code == 0 and [(r["name"], r["teacher"], r["student"]) for r in rows] == [
        ("mnist-cnn", "cnn_teacher", "cnn_student"), ("mobilenetv2", "mobilenetv2_teacher", "mobilenetv2_student"),
        ("resnet", "resnet56", "resnet20")]
