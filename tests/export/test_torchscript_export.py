"""Every zoo model exports to TorchScript and computes the same logits on real images.

Parametrized over ``edgeopt.models.list_models()`` on the real 8x8 digits (1x8x8), traced
and frozen (the default). As in ``test_onnx_parity.py``, BatchNorm running statistics are
set from real images first, so Conv+BN folding by ``torch.jit.freeze`` is really exercised.
Pass: max |torchscript - torch| <= 1e-4 on the logits and 100 % top-1 agreement on 256
real images. Plus: config validation, script mode, unscriptable / untraceable models
named by layer, the embedded spec, and optimize_for_mobile without XNNPACK.
"""

from __future__ import annotations

import json
import warnings
import zipfile

import pytest
import torch
from torch import nn

from edgeopt.artifact import Artifact, ArtifactWarning, detect_format
from edgeopt.errors import ConfigError, MissingDependencyError, UnsupportedModelError
from edgeopt.export import TorchScriptExportConfig, export_model, list_formats
from edgeopt.export.torchscript_export import read_embedded_spec, xnnpack_available
from edgeopt.models import create_model, list_models
from edgeopt.spec import attach_spec


@pytest.fixture(scope="module")
def digits256(digits_data):
    x, _ = digits_data.samples(256, split="test")
    return x


def _calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running mean/var to the exact statistics of ``x``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average, not an EMA towards the initial values
    model.train()
    with torch.no_grad():
        for chunk in x[:128].split(64):
            model(chunk)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


@pytest.mark.parametrize("name", list_models())
def test_torchscript_matches_torch_on_real_images(name, digits_data, digits256, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, digits_data.spec)
    _calibrate_bn(model, digits256)
    res = export_model(model, "torchscript", tmp_path / name, samples=digits256)
    rep = res.parity
    assert rep.n_samples == 256 and rep.inputs == "real" and rep.runtime == "torchscript"
    assert rep.max_abs_diff <= 1e-4, rep.summary()
    assert rep.top1_agreement == 1.0, rep.summary()
    assert res.artifact.path == tmp_path / f"{name}.torchscript"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.torchscript", f"{name}.torchscript.edgeopt.json"]
    meta = res.artifact.meta
    assert (meta["method"], meta["frozen"], meta["optimize_for_mobile"]) == ("trace", True, False)
    assert meta["lineage"][-1] == {"step": "export", "format": "torchscript", "exporter": "torch.jit.trace"}


def test_registry_suffix_and_config():
    assert "torchscript" in list_formats()
    assert detect_format("m.torchscript") == "torchscript"
    cfg = TorchScriptExportConfig()
    assert (cfg.method, cfg.freeze, cfg.optimize_for_mobile) == ("trace", True, False)
    with pytest.raises(ConfigError, match="method='compile' must be one of trace, script"):
        TorchScriptExportConfig(method="compile")
    with pytest.raises(ConfigError, match="example_batch"):
        TorchScriptExportConfig(example_batch=1)
    with pytest.raises(ConfigError, match="unknown key"):
        TorchScriptExportConfig.from_dict({"optimise": True})


def test_script_mode_keeps_control_flow(digits_data, digits256, tmp_path):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x.flatten(1))
            if bool(y.sum() > 0):  # data-dependent: a trace would bake one branch in
                return y
            return -y

    m = attach_spec(Branchy(), digits_data.spec).eval()
    with pytest.raises(UnsupportedModelError) as e:
        export_model(m, "torchscript", tmp_path / "t", {"method": "trace"})
    msg = e.value.one_line()
    assert "Branchy" in msg and "method='script'" in msg and "\n" not in msg
    res = export_model(m, "torchscript", tmp_path / "s", {"method": "script"}, samples=digits256)
    assert res.parity.passed and res.parity.max_abs_diff <= 1e-5
    # both branches are taken by some input, and the scripted file follows each
    from edgeopt.runtime import get_runner

    r = get_runner(res.artifact)
    for sign in (1.0, -1.0):
        x = (sign * digits256[:1]).numpy()
        with torch.no_grad():
            assert abs(float(r.predict(x).sum()) - float(m(torch.from_numpy(x)).sum())) <= 1e-4


def test_unscriptable_layer_is_named(digits_data, tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            import numpy as np

            return x.flatten(1)[:, :10] * np.float32(2.0)

    m = attach_spec(nn.Sequential(nn.Identity(), nn.Sequential(nn.ReLU(), Bad())), digits_data.spec).eval()
    with pytest.raises(UnsupportedModelError) as e:
        export_model(m, "torchscript", tmp_path / "m", {"method": "script"})
    msg = e.value.one_line()
    assert "layer '1.1' (Bad)" in msg and "method='trace'" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_spec_embedded_and_sidecarless_load(tiny_model, digits_x, tmp_path):
    res = export_model(tiny_model, "torchscript", tmp_path / "m.torchscript", samples=digits_x)
    with zipfile.ZipFile(res.artifact.path) as zf:
        entry = next(n for n in zf.namelist() if n.endswith("/extra/edgeopt_spec.json"))
        assert json.loads(zf.read(entry))["input_shape"] == [1, 8, 8]
    assert read_embedded_spec(res.artifact.path) == tiny_model.edgeopt_spec
    res.artifact.sidecar_path.unlink()
    with pytest.warns(ArtifactWarning, match="no sidecar"):
        art = Artifact.load(res.artifact.path)
    assert art.format == "torchscript" and art.spec == tiny_model.edgeopt_spec


def test_unfrozen_export_and_no_deprecation_noise(tiny_model, digits_x, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.jit's FutureWarnings are silenced inside
        res = export_model(tiny_model, "torchscript", tmp_path / "m", {"freeze": False}, samples=digits_x)
    assert res.parity.passed and res.artifact.meta["frozen"] is False


@pytest.mark.skipif(xnnpack_available(), reason="this torch has XNNPACK: optimize_for_mobile works")
def test_optimize_for_mobile_without_xnnpack_is_one_line(tiny_model, tmp_path):
    with pytest.raises(MissingDependencyError, match="XNNPACK") as e:
        export_model(tiny_model, "torchscript", tmp_path / "m", {"optimize_for_mobile": True})
    assert "\n" not in e.value.one_line()
    assert list(tmp_path.iterdir()) == []
