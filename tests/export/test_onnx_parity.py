"""Every zoo model exports to ONNX and computes the same logits on real images.

One test, parametrized over ``edgeopt.models.list_models()``:

* every model on the real 8x8 digits (1x8x8), exported with the legacy TorchScript
  exporter (fast: ~0.2-2 s per model) and, for simple_cnn and resnet20, with the default
  dynamo exporter; the dynamo export of every other model is marked ``slow`` (5-40 s each
  on 2 cores) -- run it with ``pytest -m slow``;
* simple_cnn and mobilenetv2 at 3x32x32 on the synthetic images upsampled 2x.

Weights are random, but BatchNorm running statistics are estimated on the data first
(train-mode forward passes), so BN folding in the exported graph is really exercised.
Pass: max |onnx - torch| <= 1e-4 on the logits, max relative diff <= 1e-4 (the zoo
models' random-init logits can be small, so the absolute bound alone would be weak) and
100 % top-1 agreement on 256 real images.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgeopt.models import create_model, list_models

# export with the default (dynamo) exporter in the quick run: the two fastest models
_DYNAMO_QUICK = {"simple_cnn", "resnet20"}


def _cases() -> list:
    cases = []
    for name in list_models():
        cases.append(pytest.param(name, "digits", False, id=f"{name}-digits-torchscript"))
        marks = () if name in _DYNAMO_QUICK else (pytest.mark.slow,)
        cases.append(pytest.param(name, "digits", True, id=f"{name}-digits-dynamo", marks=marks))
    for name in ("simple_cnn", "mobilenetv2"):
        cases.append(pytest.param(name, "synthetic32", False, id=f"{name}-3x32x32-torchscript"))
    return cases


@pytest.fixture(scope="module")
def real_images():
    """name -> (ModelSpec, 256 normalised real images)."""
    from edgeopt.data import get_dataset

    digits = get_dataset("digits")
    x_digits, _ = digits.samples(256, split="test")  # the test split has 360 images

    syn = get_dataset("synthetic")
    test_x, _ = syn.samples(160, split="test")  # all 160 test images
    train_x, _ = syn.samples(96, split="train")
    x16 = torch.cat([test_x, train_x])  # [256, 3, 16, 16]
    # 3x32x32: the same real images, bilinearly upsampled 2x (normalisation is linear, so
    # upsampling after normalising equals normalising the upsampled image).
    x32 = torch.nn.functional.interpolate(x16, scale_factor=2, mode="bilinear", align_corners=False)
    spec32 = dataclasses.replace(syn.spec, input_shape=(3, 32, 32))
    return {"digits": (digits.spec, x_digits), "synthetic32": (spec32, x32)}


def _calibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running mean/var to the exact statistics of ``x``."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes, not an EMA towards init
    model.train()
    with torch.no_grad():
        for chunk in x[:128].split(64):  # half the images: enough for stable statistics
            model(chunk)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


@pytest.mark.parametrize("name, data, dynamo", _cases())
def test_onnx_export_matches_torch_on_real_images(name, data, dynamo, real_images, tmp_path):
    from edgeopt.export import OnnxExportConfig, export_model

    spec, x = real_images[data]
    torch.manual_seed(0)
    model = create_model(name, spec)
    _calibrate_bn(model, x)
    bn = next((m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)), None)
    if bn is not None:  # the statistics are the data's, not the (0, 1) initial values
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))

    res = export_model(model, "onnx", tmp_path / f"{name}.onnx", OnnxExportConfig(dynamo=dynamo), samples=x)

    rep = res.parity
    assert rep.n_samples == 256 and rep.inputs == "real"
    assert rep.max_abs_diff <= 1e-4, rep.summary()
    assert rep.max_rel_diff <= 1e-4, rep.summary()
    assert rep.top1_agreement == 1.0, rep.summary()
    assert rep.passed

    # One self-contained file (no external .data), with its sidecar, dynamic batch.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx", f"{name}.onnx.edgeopt.json"]
    import onnx

    proto = onnx.load(str(res.artifact.path))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    # no per-node origin annotations (the dynamo exporter's: 354 kB of a 2.8 MB int8 MobileNetV2)
    assert not any(n.metadata_props for n in proto.graph.node)
    assert not any(v.metadata_props for v in proto.graph.value_info)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    assert res.artifact.meta["exporter"] == ("dynamo" if dynamo else "torchscript")
    assert res.artifact.meta["lineage"][-1]["step"] == "export"
    assert not model.training

    # A batch of 1 and of 7 through onnxruntime give the rows of the full batch.
    from edgeopt.runtime import get_runner

    runner = get_runner(res.artifact)
    full = runner.predict(x[:7].numpy())
    assert np.abs(runner.predict(x[:1].numpy()) - full[:1]).max() <= 1e-5
    assert full.shape == (7, spec.num_classes)
