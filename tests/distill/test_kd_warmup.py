"""The KD warm-up (DistillConfig.kd_warmup_epochs): the KD term times min(epoch / N, 1) on
fixed logits, no change without it, the training progress distill's Trainer gives, and
the config's one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.distill import (
    DistillConfig,
    DistillLoss,
    dkd_loss,
    kd_warmup_weight,
    mutual_loss,
    response_loss,
)
from edgeopt.distill._run import train_arm
from edgeopt.errors import ConfigError

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]  # the fixed logits of test_losses.py
T_ = [[3.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
Y = [0, 2]
# test_losses.py's hand computations at T=2: T^2 KL, CE, TCKD, NCKD (batch means)
KL4, CE = 0.7446981, 0.7651263
DKD = 1.5 * 0.7093136 + 8.0 * 0.0762180  # dkd_alpha * TCKD + dkd_beta * NCKD = 1.6737144


def _tensors():
    return torch.tensor(S), torch.tensor(T_), torch.tensor(Y)


@pytest.mark.parametrize("epoch, warmup, want", [
    (0.0, 20.0, 0.0), (1.0, 20.0, 0.05), (5.0, 20.0, 0.25), (10.0, 20.0, 0.5), (20.0, 20.0, 1.0),
    (240.0, 20.0, 1.0), (0.25, 0.5, 0.5), (1.0, 0.5, 1.0), (3.0, 0.0, 1.0), (None, 20.0, 1.0),
])
def test_warmup_weight_is_the_linear_ramp(epoch, warmup, want):
    assert kd_warmup_weight(epoch, warmup) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("epoch, w", [(0.0, 0.0), (1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0), (9.5, 1.0)])
def test_response_kd_term_is_scaled_by_the_ramp_and_ce_is_not(epoch, w):
    s, t, y = _tensors()
    cfg = DistillConfig(temperature=2.0, alpha=0.7, kd_warmup_epochs=4.0)
    out = response_loss(s, t, y, cfg, epoch=epoch)
    assert float(out["kd_weight"]) == w
    assert float(out["kd_loss"]) == pytest.approx(KL4, abs=1e-6)  # reported before the warm-up
    assert float(out["task_loss"]) == pytest.approx(CE, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(w * 0.7 * KL4 + 0.3 * CE, abs=1e-6)
    full = response_loss(s, t, y, cfg.replace(kd_warmup_epochs=0.0))["loss"]
    # the kd part (loss minus the unscaled CE part) is w times the un-warmed one
    ce_part = 0.3 * out["task_loss"]
    assert float(out["loss"] - ce_part) == pytest.approx(w * float(full - ce_part), abs=1e-6)


def test_response_kd_at_half_the_warmup_is_half_the_kd_part():
    s, t, y = _tensors()
    cfg = DistillConfig(temperature=2.0, alpha=0.7, kd_warmup_epochs=4.0)
    assert float(response_loss(s, t, y, cfg, epoch=2.0)["loss"]) == pytest.approx(0.4901822, abs=1e-6)
    assert float(response_loss(s, t, y, cfg, epoch=0.0)["loss"]) == pytest.approx(0.3 * CE, abs=1e-6)
    assert float(response_loss(s, t, y, cfg, epoch=4.0)["loss"]) == pytest.approx(0.7508266, abs=1e-6)


@pytest.mark.parametrize("epoch, w", [(0.0, 0.0), (0.5, 0.125), (2.0, 0.5), (4.0, 1.0), (20.0, 1.0)])
def test_dkd_term_is_scaled_by_the_ramp_and_ce_is_not(epoch, w):
    s, t, y = _tensors()
    cfg = DistillConfig(method="dkd", temperature=2.0, alpha=0.6, dkd_alpha=1.5, dkd_beta=8.0,
                        kd_warmup_epochs=4.0)
    out = dkd_loss(s, t, y, cfg, epoch=epoch)
    assert float(out["kd_weight"]) == w
    assert float(out["kd_loss"]) == pytest.approx(DKD, abs=1e-5)
    assert float(out["loss"]) == pytest.approx(w * 0.6 * DKD + 0.4 * CE, abs=1e-5)
    if epoch == 2.0:  # half the warm-up: 0.5 * 0.6 * 1.6737144 + 0.4 * 0.7651263
        assert float(out["loss"]) == pytest.approx(0.8081648, abs=1e-6)


def test_mutual_kl_is_warmed_up_too():
    a, b, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    cfg = DistillConfig(method="online", temperature=1.0, alpha=0.5, kd_warmup_epochs=2.0)
    full = mutual_loss([a, b], y, cfg.replace(kd_warmup_epochs=0.0))
    half = mutual_loss([a, b], y, cfg, epoch=1.0)
    ce_sum = 0.5 * 2 * float(full["task_loss"])  # (1 - alpha) * sum over the 2 peers
    assert float(half["kd_weight"]) == 0.5
    assert float(half["loss"]) - ce_sum == pytest.approx(0.5 * (float(full["loss"]) - ce_sum), abs=1e-6)


@pytest.mark.parametrize("method, fn", [("response", response_loss), ("dkd", dkd_loss)])
def test_zero_warmup_leaves_the_loss_unchanged(method, fn):
    s, t, y = _tensors()
    cfg = DistillConfig(method=method, temperature=2.0, alpha=0.7)
    assert cfg.kd_warmup_epochs == 0.0
    before = fn(s, t, y, cfg)
    for epoch in (None, 0.0, 0.5, 3.0):
        out = fn(s, t, y, cfg, epoch=epoch)
        assert sorted(out) == sorted(before) and "kd_weight" not in out  # the same logged parts
        assert torch.equal(out["loss"], before["loss"])


@pytest.mark.parametrize("value, match", [
    (-1.0, r"kd_warmup_epochs=-1.0 must be a finite number >= 0"),
    (float("nan"), r"kd_warmup_epochs=nan must be a finite number >= 0"),
    (float("inf"), r"kd_warmup_epochs=inf must be a finite number >= 0"),
    ("20", r"kd_warmup_epochs must be a number"),
])
def test_a_bad_warmup_is_a_one_line_config_error(value, match):
    with pytest.raises(ConfigError, match=match) as info:
        DistillConfig(kd_warmup_epochs=value)
    assert "\n" not in str(info.value)
    assert DistillConfig(kd_warmup_epochs=2.5).kd_warmup_epochs == 2.5  # fractional epochs are fine
    assert DistillConfig.from_dict({"kd_warmup_epochs": 20}).kd_warmup_epochs == 20.0


def test_distill_loss_without_progress_is_a_one_line_error():
    loss = DistillLoss(nn.Linear(3, 3), DistillConfig(kd_warmup_epochs=2.0))
    x, y = torch.randn(2, 3), torch.tensor([0, 2])
    with pytest.raises(ConfigError, match=r"kd_warmup_epochs=2 needs the training progress") as info:
        loss(nn.Linear(3, 3), x, y)
    assert "\n" not in str(info.value)
    loss.epoch = 1.0  # half the warm-up
    assert float(loss(nn.Linear(3, 3), x, y)["kd_weight"]) == 0.5


class _Recorder:
    """A loss with an ``epoch`` attribute: cross-entropy, and the progress it was given."""

    def __init__(self) -> None:
        self.epoch: float | None = None
        self.seen: list[float] = []

    def __call__(self, model, x, y):
        self.seen.append(self.epoch)
        logits = model(x)
        return {"loss": nn.functional.cross_entropy(logits, y), "logits": logits}


def test_distill_trainer_gives_the_loss_its_progress_every_step(make_student, digits_data):
    cfg = DistillConfig(epochs=2, max_steps_per_epoch=3, batch_size=32, threads=1, kd_warmup_epochs=2.0)
    rec = _Recorder()
    train_arm(make_student(), cfg, digits_data, 0, rec)
    assert rec.seen == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3, 2.0], abs=1e-12)
    # without the cap, steps per epoch = ceil(train images / batch)
    n = -(-len(digits_data.train) // 512)
    rec = _Recorder()
    train_arm(make_student(), cfg.replace(epochs=1, max_steps_per_epoch=None, batch_size=512), digits_data, 0, rec)
    assert rec.seen == pytest.approx([(k + 1) / n for k in range(n)], abs=1e-12)


def test_distill_logs_the_mean_kd_weight_per_epoch(make_student, digits_data):
    teacher = make_student(seed=2).eval()
    cfg = DistillConfig(epochs=2, max_steps_per_epoch=3, batch_size=32, threads=1, kd_warmup_epochs=2.0)
    run = train_arm(make_student(), cfg, digits_data, 0, DistillLoss(teacher, cfg))
    # per step: 1/6, 2/6, 3/6 in epoch 1, then 4/6, 5/6, 1 (3 equal batches each)
    assert [r["train_kd_weight"] for r in run.history] == pytest.approx([1 / 3, 5 / 6], abs=1e-6)
