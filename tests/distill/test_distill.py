"""Every method runs end to end on real digits; the baseline starts from the same weights;
seeds are summarised with mean, spread, gain and an honest verdict."""

from __future__ import annotations

import json
import math

import pytest
import torch

from edgeopt.distill import DISTILL_METHODS, DistillConfig, _base, distill, list_methods, summarize
from edgeopt.distill._run import ArmRun, accuracy, reinit
from edgeopt.models import load_weights_

FAST = {"epochs": 3, "batch_size": 64, "lr": 0.05}
ARM_KEYS = {"test_acc", "val_acc", "best_epoch", "history"}
SUMMARY_KEYS = {"seeds", "student_mean", "student_std", "baseline_mean", "baseline_std", "gain",
                "threshold", "verdict"}


@pytest.mark.parametrize("method, extra, details", [
    ("response", {}, set()),
    ("dkd", {}, set()),
    ("feature", {"feature_pairs": [["features.5", "features.3"]], "feature_weight": 1.0},
     {"feature_pairs", "adapted_pairs"}),
    ("feature", {"feature_pairs": [["features.2", "features.1"]], "feature_loss": "attention",
                 "feature_weight": 100.0}, {"feature_pairs", "adapted_pairs"}),
    ("progressive", {"assistants": ["simple_cnn"]}, {"links"}),
    ("self", {"generations": 2}, {"generations", "chosen_generation"}),
    ("online", {"peers": 2}, {"peers", "chosen_peer"}),
])
def test_each_method_runs_end_to_end_on_digits(make_student, teacher, digits_data, method, extra, details):
    student = make_student()
    given = None if method == "online" else teacher
    r = distill(student, given, DistillConfig(method=method, **FAST, **extra), digits_data, progress=False)
    run = r.runs[0]
    assert run["seed"] == 0 and set(run["student"]) == ARM_KEYS | details and set(run["baseline"]) == ARM_KEYS
    acc = run["student"]["test_acc"]
    assert acc > 0.5 and run["baseline"]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert set(r.summary) >= SUMMARY_KEYS and r.summary["student_mean"] == acc
    assert r.summary["verdict"] in ("gain", "loss", "no measurable gain")
    hist = run["student"]["history"]
    assert len(hist) == 3 and all("train_kd_loss" in h and "train_task_loss" in h for h in hist)
    # the returned model is the one reported: its best epoch, measured again on test
    assert r.model is not student and not r.model.training
    assert accuracy(r.model, digits_data, "test") == pytest.approx(acc, abs=1e-12)
    assert accuracy(r.baseline_model, digits_data, "test") == pytest.approx(run["baseline"]["test_acc"], abs=1e-12)
    assert r.teacher_acc == (None if method == "online" else pytest.approx(accuracy(teacher, digits_data)))
    json.dumps(r.to_dict())  # JSON-ready
    if method == "progressive":
        links = run["student"]["links"]
        assert [link["model"] for link in links] == ["simple_cnn", "student (TinyStudent)"]
        assert all(link["test_acc"] > 0.5 for link in links) and links[-1]["test_acc"] == acc
    if method == "self":
        gens = run["student"]["generations"]
        assert [g["generation"] for g in gens] == [1, 2] and all(g["test_acc"] > 0.5 for g in gens)
        best = max(gens, key=lambda g: g["val_acc"])
        assert acc == best["test_acc"] and run["student"]["chosen_generation"] == best["generation"]
    if method == "online":
        peers = run["student"]["peers"]
        assert [p["peer"] for p in peers] == [0, 1] and all(p["test_acc"] > 0.5 for p in peers)
        assert acc == peers[run["student"]["chosen_peer"]]["test_acc"]
        assert type(r.model).__name__ == "TinyStudent"


def test_methods_are_registered():
    assert list_methods() == ["dkd", "feature", "online", "progressive", "response", "self"]


def test_alpha_zero_distillation_is_exactly_the_baseline(make_student, teacher, digits_data):
    # alpha=0 leaves only the hard-label CE: the same start, data order and seed must give
    # the same weights, bit for bit, so the two arms differ only by the teacher
    r = distill(make_student(), teacher, DistillConfig(alpha=0.0, epochs=2, batch_size=64), digits_data,
                progress=False)
    assert r.runs[0]["student"]["test_acc"] == r.runs[0]["baseline"]["test_acc"]
    for a, b in zip(r.model.state_dict().values(), r.baseline_model.state_dict().values()):
        assert torch.equal(a, b)
    assert r.summary["gain"] == 0.0 and r.summary["verdict"] == "no measurable gain"


def _stub(monkeypatch, student_accs, baseline_accs, starts=None):
    def method(student, teacher, config, data, seed, progress, ctx):
        if starts is not None:
            starts.setdefault(seed, {})["student"] = {k: v.clone() for k, v in student.state_dict().items()}
        return ArmRun(student, student_accs[seed], 0.9, [{"epoch": 1}])

    def baseline(model, config, data, seed, loss_fn=None, progress=False, label=""):
        assert loss_fn is None  # the baseline has no teacher
        if starts is not None:
            starts.setdefault(seed, {})["baseline"] = {k: v.clone() for k, v in model.state_dict().items()}
        return ArmRun(model, baseline_accs[seed], 0.9, [{"epoch": 1}])

    monkeypatch.setitem(DISTILL_METHODS._items, "response", method)
    monkeypatch.setattr(_base, "train_arm", baseline)


def test_seed_summary_on_a_stub_is_hand_checked(monkeypatch, make_student, teacher, digits_data):
    _stub(monkeypatch, {3: 0.95, 4: 0.96, 5: 0.97}, {3: 0.80, 4: 0.81, 5: 0.82})
    r = distill(make_student(), teacher, DistillConfig(seeds=3, seed=3), digits_data, progress=False)
    assert [run["seed"] for run in r.runs] == [3, 4, 5]
    s = r.summary
    # means 0.96 / 0.81; sample std sqrt(((-.01)^2 + 0 + .01^2) / 2) = 0.01 each
    assert s["student_mean"] == pytest.approx(0.96) and s["student_std"] == pytest.approx(0.01)
    assert s["baseline_mean"] == pytest.approx(0.81) and s["baseline_std"] == pytest.approx(0.01)
    assert s["gain"] == pytest.approx(0.15)
    assert s["threshold"] == pytest.approx(2 * math.sqrt(0.01**2 + 0.01**2))  # 0.02828
    assert s["verdict"] == "gain" and s["seeds"] == 3


def test_a_gain_inside_the_noise_is_no_measurable_gain(monkeypatch, make_student, teacher, digits_data):
    _stub(monkeypatch, {0: 0.90, 1: 0.92, 2: 0.94}, {0: 0.88, 1: 0.90, 2: 0.92})
    r = distill(make_student(), teacher, DistillConfig(seeds=3), digits_data, progress=False)
    # gain 0.02 against 2 * sqrt(0.02^2 + 0.02^2) = 0.0566: not a win
    assert r.summary["gain"] == pytest.approx(0.02)
    assert r.summary["threshold"] == pytest.approx(0.056569, abs=1e-6)
    assert r.summary["verdict"] == "no measurable gain"


def test_summarize_verdicts():
    assert summarize([0.80, 0.81, 0.82], [0.95, 0.96, 0.97])["verdict"] == "loss"
    one = summarize([0.90], [0.90])
    assert (one["gain"], one["threshold"], one["verdict"]) == (0.0, 0.0, "no measurable gain")
    assert "one seed" in one["note"]
    assert summarize([0.91], [0.90])["verdict"] == "gain"
    alone = summarize([0.9, 0.8])
    assert alone["verdict"] == "no baseline" and alone["gain"] is None
    assert alone["student_std"] == pytest.approx(math.sqrt(0.005))  # sample std of 0.9, 0.8


def test_both_arms_start_from_the_same_weights_per_seed(monkeypatch, make_student, teacher, digits_data):
    student = make_student()
    starts: dict = {}
    _stub(monkeypatch, {0: 0.9, 1: 0.9}, {0: 0.9, 1: 0.9}, starts)
    distill(student, teacher, DistillConfig(seeds=2), digits_data, progress=False)
    given = student.state_dict()
    for seed in (0, 1):  # init="given": every seed, both arms, the student's own weights
        for arm in ("student", "baseline"):
            assert all(torch.equal(v, given[k]) for k, v in starts[seed][arm].items())
    starts.clear()
    distill(student, teacher, DistillConfig(seeds=2, init="seed"), digits_data, progress=False)
    for seed in (0, 1):  # init="seed": a fresh draw per seed, the same for both arms
        a, b = starts[seed]["student"], starts[seed]["baseline"]
        assert all(torch.equal(v, b[k]) for k, v in a.items())
        want = reinit(student, seed).state_dict()
        assert all(torch.equal(v, want[k]) for k, v in a.items())
    w0, w1 = starts[0]["student"]["fc.weight"], starts[1]["student"]["fc.weight"]
    assert not torch.equal(w0, w1) and not torch.equal(w0, given["fc.weight"])


def test_two_real_seeds_report_mean_and_spread(make_student, teacher, digits_data):
    r = distill(make_student(), teacher, DistillConfig(seeds=2, epochs=2, batch_size=64), digits_data,
                progress=False)
    s_accs = [run["student"]["test_acc"] for run in r.runs]
    b_accs = [run["baseline"]["test_acc"] for run in r.runs]
    assert [run["seed"] for run in r.runs] == [0, 1]
    assert r.summary["student_mean"] == pytest.approx(sum(s_accs) / 2)
    assert r.summary["student_std"] == pytest.approx(abs(s_accs[0] - s_accs[1]) / math.sqrt(2))
    assert r.summary["baseline_std"] == pytest.approx(abs(b_accs[0] - b_accs[1]) / math.sqrt(2))
    assert r.summary["gain"] == pytest.approx(r.summary["student_mean"] - r.summary["baseline_mean"])
    assert r.info["teacher_forwards"] == math.ceil(1295 / 64)  # the cache serves both seeds


def test_out_dir_gets_checkpoints_and_json(make_student, teacher, digits_data, tmp_path):
    cfg = DistillConfig(epochs=1, batch_size=64, out_dir=str(tmp_path / "kd"))
    r = distill(make_student(), teacher, cfg, digits_data, progress=False)
    names = sorted(p.name for p in (tmp_path / "kd").iterdir())
    assert names == ["baseline.json", "baseline.safetensors", "distill.json", "runs", "student.json",
                     "student.safetensors"]  # runs/: the per-seed arms a re-run resumes from
    saved = json.loads((tmp_path / "kd" / "distill.json").read_text())
    assert saved["summary"] == pytest.approx(r.summary) and saved["config"]["method"] == "response"
    model = make_student()
    load_weights_(model, tmp_path / "kd" / "student.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), r.model.state_dict().values()))
    side = json.loads((tmp_path / "kd" / "student.json").read_text())
    assert side["metrics"]["test_acc"] == r.runs[0]["student"]["test_acc"]
    assert side["lineage"][-1]["step"] == "distill"
