"""TrainConfig validation and the LR schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.train import LRSchedule, TrainConfig, build_optimizer, build_schedule


@pytest.mark.parametrize(
    "changes",
    [
        {"epochs": 0}, {"batch_size": 0}, {"lr": -0.1}, {"lr": float("nan")},
        {"optimizer": "adam"}, {"schedule": "linear"}, {"precision": "int8"},
        {"momentum": 1.5}, {"label_smoothing": 1.0}, {"grad_clip": 0.0}, {"grad_clip": -1.0},
        {"device": "tpu"}, {"warmup_epochs": 20, "epochs": 2}, {"resume": True},
        {"nesterov": True, "optimizer": "adamw"}, {"early_stop_patience": 0},
        {"max_steps_per_epoch": 0}, {"checkpoint_every_steps": -1}, {"epochs": 2.5},
        {"epochs": True}, {"eval_every": 0}, {"gamma": 2.0},
        {"threads": 0}, {"threads": 100_000}, {"batch_size": 10**9},
    ],
)
def test_bad_values_raise_config_error(changes):
    with pytest.raises(ConfigError):
        TrainConfig(**changes)


def test_thread_and_batch_bounds_are_named():
    from edgeopt.config import MAX_BATCH_SIZE, MAX_THREADS

    assert TrainConfig(threads=MAX_THREADS, batch_size=MAX_BATCH_SIZE).threads == 1024
    with pytest.raises(ConfigError, match=r"^TrainConfig.threads=100000 must be in \[1, 1024\]"):
        TrainConfig(threads=100_000)  # used to hang: one OS thread per count
    with pytest.raises(ConfigError, match=r"^TrainConfig.batch_size=1000000000 must be in \[1, 1048576\]"):
        TrainConfig(batch_size=10**9)


def test_from_dict_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="integer"):
        TrainConfig.from_dict({"epochs": "3"})
    cfg = TrainConfig.from_dict({"epochs": 3, "grad_clip": 1, "out_dir": "x", "resume": True})
    assert cfg.epochs == 3 and cfg.grad_clip == 1.0 and cfg.resume
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_warmup_then_cosine_matches_hand_computed():
    # 2 epochs x 10 steps, 1 warm-up epoch: steps 0..9 rise linearly to 0.1, then a
    # half cosine over the remaining 10 steps.
    s = build_schedule(TrainConfig(epochs=2, lr=0.1, warmup_epochs=1), steps_per_epoch=10)
    assert (s.total_steps, s.warmup_steps) == (20, 10)
    assert s(0) == pytest.approx(0.01)
    assert s(4) == pytest.approx(0.05)
    assert s(9) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.1)
    assert s(15) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))  # 0.05
    assert s(19) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_step_and_constant_schedules():
    s = LRSchedule(1.0, "step", total_steps=100, steps_per_epoch=10, step_size=3, gamma=0.5)
    assert [s(i * 10) for i in (0, 2, 3, 5, 6, 9)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    c = build_schedule(TrainConfig(epochs=3, lr=0.2, schedule="constant"), 7)
    assert c.is_constant and c(0) == c(20) == 0.2


def test_optimizer_does_not_decay_biases_and_norms():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    opt = build_optimizer(m, TrainConfig(weight_decay=0.01, optimizer="sgd", nesterov=True))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert sum(p.numel() for p in decay["params"]) == 3 * 4 * 9 + 4 * 2
    assert decay["nesterov"] is True
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        build_optimizer(m, TrainConfig())


def test_state_rng_roundtrip_is_weights_only(tmp_path):
    import random

    import numpy as np

    from edgeopt.train.state import capture_rng, load_train_state, restore_rng, save_train_state

    opt = torch.optim.AdamW(nn.Linear(3, 2).parameters())
    save_train_state(tmp_path, {"rng": capture_rng(), "optimizer": opt.state_dict()})
    a = (torch.rand(3), np.random.rand(3), random.random())
    state = load_train_state(tmp_path)  # torch.load(weights_only=True) inside
    restore_rng(state["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_malicious_train_state_is_refused_for_safety_without_torchs_advice(tmp_path):
    import os

    from edgeopt.errors import ModelLoadError
    from edgeopt.train.state import STATE_VERSION, load_train_state

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo PWNED",))

    torch.save({"version": STATE_VERSION, "epoch": 1, "x": Evil()}, tmp_path / "train_state.pt")
    with pytest.raises(ModelLoadError) as info:
        load_train_state(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"refused to load {tmp_path / 'train_state.pt'} for safety: it is not a "
                          f"plain weights file (loading it needs posix.system")
    assert "delete it" in msg and "\n" not in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
