"""Fakes for the evaluate tests: a Runner with known logits, a tiny conv/linear net, and a
hand-built ONNX file (onnx.helper, no exporter needed) with known weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.spec import ModelSpec, attach_spec


class FixedRunner:
    """A Runner that answers each predict() call with the next block of known logits."""

    name = "fake"
    threads = 1

    def __init__(self, logits: np.ndarray):
        self.logits = np.asarray(logits, dtype=np.float32)
        self.pos = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.logits[self.pos : self.pos + len(batch)]
        self.pos += len(batch)
        return out


class ModuleRunner:
    """A minimal torch Runner over an nn.Module (stands in for edgeopt.runtime's)."""

    name = "torch"

    def __init__(self, model: nn.Module, threads: int = 1):
        self.model = model.eval()
        self.threads = threads
        self.calls = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()


class TinyNet(nn.Module):
    """conv(3->8, k3, pad1) -> relu -> conv(8->16, k3, stride2, groups 2) -> pool -> fc(16->10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.conv2(x)
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def fixed_runner():
    """The FixedRunner class: ``fixed_runner(logits)``."""
    return FixedRunner


@pytest.fixture
def module_runner():
    """The ModuleRunner class: ``module_runner(model, threads=1)``."""
    return ModuleRunner


@pytest.fixture
def gemm_onnx():
    """``gemm_onnx(path, weight, bias, input_shape)`` writes a Flatten+Gemm ONNX file."""
    return write_gemm_onnx


@pytest.fixture
def spec16() -> ModelSpec:
    return ModelSpec((3, 16, 16), 10, (0.5,) * 3, (0.25,) * 3, dataset="test")


@pytest.fixture
def tiny_net(spec16) -> nn.Module:
    torch.manual_seed(0)
    return attach_spec(TinyNet().eval(), spec16)


def write_gemm_onnx(path, weight: np.ndarray, bias: np.ndarray, input_shape=(1, 4, 4)) -> str:
    """An ONNX classifier: Flatten -> Gemm(weight [classes, C*H*W], bias), batch dim dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, h, w = input_shape
    classes = weight.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
        ],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        initializer=[
            numpy_helper.from_array(weight.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "B"),
            numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "unused_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)
