"""Layer handling on models from other libraries (timm), which the zoo never exercises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.quantize.layers import fold_batchnorm, quantizable_layers


def test_timm_batchnormact_is_folded_into_its_conv():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("efficientnet_lite0", num_classes=10).eval()
    with torch.no_grad():  # non-trivial statistics, so an unfolded or wrongly folded BN shows
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert n_bn >= 49 and any(type(mod).__name__ == "BatchNormAct2d" for mod in m.modules())
    f = fold_batchnorm(m)
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in f.modules()) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert float((f(x) - m(x)).abs().max()) < 1e-4
    # every conv and linear keeps its qualified name, so patterns and reports still find them
    assert set(quantizable_layers(m)) <= {n for n, _ in f.named_modules()}


def test_timm_linear_subclass_stays_a_layer_and_quantizes(synthetic_data, tmp_path):
    """timm's Linear subclasses nn.Linear; fx used to trace into it, so the ONNX Runtime
    backend said "'classifier' is not a Conv/Linear layer" (ghostnet, mobilenetv3)."""
    pytest.importorskip("timm")
    from edgeopt.models import create_model, trusted_model_code
    from edgeopt.quantize import QuantConfig, quantize

    with trusted_model_code():
        m = create_model("timm.models:mobilenetv3_small_050", synthetic_data.spec).eval()
    assert type(m.classifier).__module__.startswith("timm")
    f = fold_batchnorm(m)
    assert isinstance(dict(f.named_modules())["classifier"], nn.Linear)
    res = quantize(m, QuantConfig(calibration_samples=64), synthetic_data, tmp_path / "mnv3", progress=False)
    assert res.artifact.path.is_file() and "classifier" not in res.float_layers
