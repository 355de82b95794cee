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
