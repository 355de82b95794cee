"""ONNX Runtime graph optimization levels: each level's saved graph keeps parity.

simple_cnn and mobilenetv2 on the real 8x8 digits (BN statistics set from real images),
exported with the fast legacy exporter, then optimized offline by onnxruntime at
basic / extended / all. Pass: max abs diff <= 1e-4 and 100 % top-1 agreement on 256 real
images, the level recorded in the sidecar and the file, and the runner loading the file
at that same level.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.export import OnnxExportConfig, export_model
from edgeopt.export.onnx_export import ORT_LEVEL_KEY
from edgeopt.models import create_model
from edgeopt.runtime import get_runner

_ORT = {"none": "ORT_ENABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


@pytest.fixture(scope="module")
def digits256(digits_data):
    x, _ = digits_data.samples(256, split="test")
    return x


@pytest.fixture(scope="module", params=["simple_cnn", "mobilenetv2"])
def calibrated(request, digits_data, digits256):
    torch.manual_seed(0)
    model = create_model(request.param, digits_data.spec)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(digits256[:128])
    return model.eval()


@pytest.mark.parametrize("level", ["none", "basic", "extended", "all"])
def test_level_keeps_parity(level, calibrated, digits256, tmp_path):
    res = export_model(calibrated, "onnx", tmp_path / "m.onnx", {"dynamo": False, "optimization": level},
                       samples=digits256)
    rep = res.parity
    assert rep.n_samples == 256 and rep.max_abs_diff <= 1e-4 and rep.top1_agreement == 1.0, rep.summary()
    meta = res.artifact.meta
    assert meta.get("ort_optimization") == (None if level == "none" else level)
    props = {p.key: p.value for p in onnx.load(str(res.artifact.path)).metadata_props}
    assert props.get(ORT_LEVEL_KEY) == (None if level == "none" else level)
    assert "edgeopt.spec" in props  # the spec survives onnxruntime's rewrite
    runner = get_runner(res.artifact)
    level_used = runner.session.get_session_options().graph_optimization_level
    assert level_used == getattr(ort.GraphOptimizationLevel, _ORT[level])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.edgeopt.json"]  # no temp files left


def test_all_level_uses_layout_ops(calibrated, tmp_path):
    plain = export_model(calibrated, "onnx", tmp_path / "p.onnx", {"dynamo": False}).artifact
    opt = export_model(calibrated, "onnx", tmp_path / "a.onnx", {"dynamo": False, "optimization": "all"}).artifact
    domains = {n.domain for n in onnx.load(str(opt.path)).graph.node}
    assert "com.microsoft.nchwc" in domains  # NCHWc blocked convs: hardware-specific, as documented
    assert {n.domain for n in onnx.load(str(plain.path)).graph.node} <= {"", "ai.onnx"}


def test_bad_level():
    with pytest.raises(ConfigError, match="optimization='fast' must be one of none, basic, extended, all"):
        OnnxExportConfig(optimization="fast")
