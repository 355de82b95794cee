"""distill() with out_dir resumes seed by seed and arm by arm: finished arms are reused
under the same fingerprint, missing ones train, another config retrains everything, and an
arm killed mid-way continues from the Trainer's last epoch with the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeopt.distill import DistillConfig, _run, distill
from edgeopt.train import Trainer

CFG = {"epochs": 2, "batch_size": 64, "lr": 0.05, "seeds": 2, "baseline": True}


@pytest.fixture
def fits(monkeypatch):
    """The out_dir of every Trainer.fit call (ProgressTrainer included), relative to runs/."""
    calls: list[tuple[str, bool]] = []
    real = Trainer.fit

    def fit(self, model, data):
        out = self.config.out_dir
        calls.append(("/".join(Path(out).parts[-2:]) if out else "", self.config.resume))
        return real(self, model, data)

    monkeypatch.setattr(Trainer, "fit", fit)
    return calls


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_finished_arms_are_reused_missing_ones_train_and_a_new_config_retrains(
        make_student, teacher, digits_data, tmp_path, fits, capsys):
    out = tmp_path / "kd"
    cfg = DistillConfig(**CFG, out_dir=str(out))
    first = distill(make_student(), teacher, cfg, digits_data, progress=False)
    assert fits == [("seed0/student_train", False), ("seed0/baseline_train", False),
                    ("seed1/student_train", False), ("seed1/baseline_train", False)]
    seed_dir = out / "runs" / "seed1"
    assert sorted(p.name for p in seed_dir.iterdir()) == [
        "baseline.json", "baseline.safetensors", "student.json", "student.safetensors"]  # Trainer folders gone
    side = json.loads((seed_dir / "student.json").read_text())["extra"]["distill_arm"]
    assert side["record"]["test_acc"] == first.runs[1]["student"]["test_acc"]
    assert side["fingerprint"]["seed"] == 1 and "out_dir" not in side["fingerprint"]["config"]
    assert first.info["reused_arms"] == []

    # (a) the same config again: nothing trains, everything is identical
    fits.clear()
    again = distill(make_student(), teacher, cfg, digits_data, progress=True)
    assert fits == []
    assert again.summary == first.summary and again.runs == first.runs
    assert again.summary["verdict"] == first.summary["verdict"]
    assert _same_weights(again.model, first.model) and _same_weights(again.baseline_model, first.baseline_model)
    assert again.info["reused_arms"] == ["seed 0 student", "seed 0 baseline", "seed 1 student", "seed 1 baseline"]
    assert again.info["teacher_cache"] == first.info["teacher_cache"] == "on"
    err = capsys.readouterr().err
    assert f"distill: seed 1 baseline: reused from {seed_dir / 'baseline.safetensors'}" in err

    # (b) one arm's files gone: exactly that arm trains, the others are unchanged
    for suffix in (".safetensors", ".json"):
        (seed_dir / f"baseline{suffix}").unlink()
    fits.clear()
    partial = distill(make_student(), teacher, cfg, digits_data, progress=False)
    assert fits == [("seed1/baseline_train", False)]
    assert partial.runs[0] == first.runs[0] and partial.runs[1]["student"] == first.runs[1]["student"]
    # the retrained baseline is the same training (same seed, same start): same accuracy
    assert partial.runs[1]["baseline"]["test_acc"] == first.runs[1]["baseline"]["test_acc"]
    assert partial.summary == first.summary
    assert (seed_dir / "baseline.json").is_file()

    # (c) another temperature: every arm trains again, none is mixed in
    fits.clear()
    other = distill(make_student(), teacher, cfg.replace(temperature=2.0), digits_data, progress=False)
    assert len(fits) == 4 and other.info["reused_arms"] == []
    side = json.loads((seed_dir / "student.json").read_text())["extra"]["distill_arm"]
    assert side["fingerprint"]["config"]["temperature"] == 2.0
    assert side["record"]["test_acc"] == other.runs[1]["student"]["test_acc"]

    # more seeds reuse the finished ones (seeds is not in the fingerprint)
    fits.clear()
    more = distill(make_student(), teacher, cfg.replace(temperature=2.0, seeds=3), digits_data, progress=False)
    assert fits == [("seed2/student_train", False), ("seed2/baseline_train", False)]
    assert more.runs[:2] == other.runs


class Killed(Exception):
    pass


def test_an_arm_killed_mid_way_resumes_from_its_last_epoch(make_student, teacher, digits_data, tmp_path,
                                                          fits, monkeypatch):
    # 3 epochs with a KD warm-up over 2: the warm-up weight depends on the restored step count
    cfg = DistillConfig(epochs=3, batch_size=64, lr=0.05, baseline=False, kd_warmup_epochs=2.0)
    whole = distill(make_student(), teacher, cfg, digits_data, progress=False)

    real = _run.KeepBest.on_epoch_end

    def kill_after_epoch_2(self, trainer, record):
        real(self, trainer, record)
        if record["epoch"] == 2:  # the Trainer has saved train_state.pt for 2 epochs
            raise Killed

    monkeypatch.setattr(_run.KeepBest, "on_epoch_end", kill_after_epoch_2)
    out = tmp_path / "kd"
    with pytest.raises(Killed):
        distill(make_student(), teacher, cfg.replace(out_dir=str(out)), digits_data, progress=False)
    train_dir = out / "runs" / "seed0" / "student_train"
    assert (train_dir / "train_state.pt").is_file() and not (out / "runs" / "seed0" / "student.json").exists()

    monkeypatch.setattr(_run.KeepBest, "on_epoch_end", real)
    fits.clear()
    resumed = distill(make_student(), teacher, cfg.replace(out_dir=str(out)), digits_data, progress=False)
    assert fits == [("seed0/student_train", True)]
    got, want = resumed.runs[0]["student"], whole.runs[0]["student"]
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3]
    # warm-up weights min(epoch / 2, 1) averaged over each epoch's steps: restored, not restarted
    for g, w in zip(got["history"], want["history"]):
        assert g["train_kd_weight"] == pytest.approx(w["train_kd_weight"], abs=1e-12)
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)
        assert g["val_acc"] == pytest.approx(w["val_acc"], abs=1e-12)
    assert got["history"][2]["train_kd_weight"] == pytest.approx(1.0)
    assert got["best_epoch"] == want["best_epoch"]
    assert got["test_acc"] == pytest.approx(want["test_acc"], abs=1e-12)
    assert resumed.summary["student_mean"] == pytest.approx(whole.summary["student_mean"], abs=1e-12)
    assert not train_dir.exists()  # the arm's checkpoint replaced its Trainer folder


def test_without_out_dir_nothing_is_written(make_student, teacher, digits_data, tmp_path, fits, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = distill(make_student(), teacher, DistillConfig(epochs=1, batch_size=64, max_steps_per_epoch=3),
                digits_data, progress=False)
    assert fits == [("", False), ("", False)] and "reused_arms" not in r.info
    assert list(tmp_path.iterdir()) == []
