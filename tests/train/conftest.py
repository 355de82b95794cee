"""Fixtures for the training-loop tests: a tiny CNN and a tiny in-memory DataModule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.spec import attach_spec


class TinyNet(nn.Module):
    """3x16x16 -> 10 logits; ~2.5k parameters, with dropout so RNG state matters."""

    def __init__(self, channels: int = 3, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 4)  # [B, w, 4, 4]
        return self.fc(self.drop(x.flatten(1)))


@pytest.fixture
def tiny_model(synthetic_data):
    def make(seed: int = 0, width: int = 8) -> nn.Module:
        torch.manual_seed(seed)
        m = TinyNet(width=width)
        m.edgeopt_arch = {"name": f"tinynet{width}", "kwargs": {}}
        return attach_spec(m, synthetic_data.spec)

    return make
