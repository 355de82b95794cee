"""Fixtures of the export tests: a tiny digits CNN with real BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def digits_x(digits_data):
    """128 real normalised digits, float32 [128, 1, 8, 8] (test split)."""
    x, _ = digits_data.samples(128, split="test")
    return x


@pytest.fixture
def tiny_model(digits_data, digits_x):
    """A fresh conv-BN-ReLU-pool-linear model on 1x8x8 (function scope: tests mutate it)."""
    from edgeopt.spec import attach_spec

    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 10),
    )
    attach_spec(m, digits_data.spec)
    m.train()
    with torch.no_grad():
        m(digits_x)
    return m.eval()
