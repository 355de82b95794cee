"""Fixtures of the runtime tests: a tiny digits CNN and its ONNX artifact (exported once)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class _TinyCNN(nn.Module):
    """conv-BN-ReLU-pool-linear on 1x8x8; records the torch thread count it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(32, 10)
        self.seen_threads: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 8, 8] -> [N, 10]
        self.seen_threads.append(torch.get_num_threads())
        return self.head(self.features(x).flatten(1))


@pytest.fixture(scope="session")
def digits_batch(digits_data):
    """64 real normalised digits, float32 [64, 1, 8, 8]."""
    x, _ = digits_data.samples(64, split="test")
    return x


@pytest.fixture(scope="session")
def tiny_model(digits_data, digits_batch):
    from edgeopt.spec import attach_spec

    torch.manual_seed(0)
    m = attach_spec(_TinyCNN(), digits_data.spec)
    m.train()
    with torch.no_grad():  # non-trivial BN running statistics
        m(digits_batch)
    return m.eval()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, digits_batch, tmp_path_factory):
    """The tiny model exported with the (fast) legacy exporter; returns its Artifact."""
    from edgeopt.export import export_model

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_model(tiny_model, "onnx", out, {"dynamo": False, "opset": 18}, samples=digits_batch).artifact
