"""Fixtures for the distillation tests: a tiny student for digits and a counting teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeopt.spec import attach_spec


class TinyStudent(nn.Module):
    """1x8x8 -> 10 logits, ~3.2k parameters: conv8-bn-relu-pool-conv16-bn-relu, fc.

    Layer shapes per image: features.1 (8, 8, 8), features.3 (8, 4, 4),
    features.5 / features.6 (16, 4, 4).
    """

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.fc = nn.Linear(2 * width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@pytest.fixture
def make_student(digits_data):
    """``make_student(seed=1)``: a fresh TinyStudent carrying the digits spec."""

    def make(seed: int = 1) -> nn.Module:
        torch.manual_seed(seed)
        return attach_spec(TinyStudent(), digits_data.spec)

    return make


@pytest.fixture
def teacher(digits_cnn):
    """A copy of the session's trained simple_cnn (test accuracy >= 0.95), in eval mode; a
    copy, so hooks a test adds do not leak into other tests."""
    assert not digits_cnn.training
    return copy.deepcopy(digits_cnn)


class ForwardLog:
    """A forward hook recording, per teacher forward, its mode and whether grad was on.

    deepcopy copies a module's hooks, and this hook copies as itself, so it also sees the
    forwards of the frozen copies that distill makes.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool, int]] = []  # (training, grad enabled, batch)

    def __deepcopy__(self, memo) -> ForwardLog:
        return self  # the teacher's copies log into this same list

    def __call__(self, module, inputs, output) -> None:
        self.calls.append((module.training, torch.is_grad_enabled(), int(inputs[0].shape[0])))


@pytest.fixture
def forward_log():
    return ForwardLog()
