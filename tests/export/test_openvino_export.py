"""OpenVINO export: every zoo model's IR computes the eager model's logits on real digits.

* fp32, every model of ``list_models()`` (ONNX route with the fast legacy tracer; the
  default dynamo route and the ``source="torch"`` route on simple_cnn): max |ov - torch|
  <= 1e-4 and 100 % top-1 agreement on 256 real test digits (1x8x8), BatchNorm statistics
  estimated on real images first, and the compiled model's inference precision is f32.
* fp16 IR (fp16 weights in the .bin): the fp16 parity thresholds, and the .bin is half.
* int8 from a QDQ ONNX file made here with ``onnxruntime.quantization.quantize_static``
  on real digits: the int8 parity thresholds, convolutions run in 8-bit integers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from edgeopt.errors import ConfigError
from edgeopt.export import OpenVINOExportConfig, export_model, openvino_from_onnx
from edgeopt.models import create_model, list_models

FAST = OpenVINOExportConfig(onnx_dynamo=False)  # legacy ONNX tracer: ~1 s instead of 5-40 s


@pytest.fixture(scope="module")
def digits():
    """(DataModule, 256 real normalised test digits [256, 1, 8, 8])."""
    from edgeopt.data import get_dataset

    dm = get_dataset("digits")
    x, _ = dm.samples(256, split="test")
    return dm, x


def _zoo(name: str, spec, x: torch.Tensor) -> torch.nn.Module:
    """A zoo model with BatchNorm running statistics set to those of real images."""
    torch.manual_seed(0)
    model = create_model(name, spec)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average, not an EMA towards the (0, 1) init
    model.train()
    with torch.no_grad():
        for chunk in x[:128].split(64):
            model(chunk)
    return model.eval()


@pytest.fixture(scope="module")
def resnet20(digits):
    dm, x = digits
    return _zoo("resnet20", dm.spec, x)


@pytest.mark.parametrize("name", list_models())
def test_openvino_fp32_matches_torch_on_real_digits(name, digits, tmp_path):
    from edgeopt.evaluate import measure_size
    from edgeopt.runtime import get_runner

    dm, x = digits
    model = _zoo(name, dm.spec, x)
    res = export_model(model, "openvino", tmp_path / f"{name}.xml", FAST, samples=x)

    rep = res.parity
    assert rep.n_samples == 256 and rep.inputs == "real" and rep.runtime == "openvino"
    assert rep.max_abs_diff <= 1e-4, rep.summary()
    assert rep.top1_agreement == 1.0, rep.summary()
    assert res.artifact.precision == "fp32" and res.artifact.format == "openvino"
    # the IR pair and its sidecar, nothing else (no temporary folder left behind)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.bin", f"{name}.xml", f"{name}.xml.edgeopt.json"]
    runner = get_runner(res.artifact)
    assert runner.inference_precision == "f32"  # fp32 means fp32 (never bf16 by default)
    # what you ship is the .xml and the .bin
    size = measure_size(res.artifact)
    assert size.bytes == sum(f.stat().st_size for f in res.artifact.files()) == res.artifact.size_bytes
    assert len(size.files) == 2 and size.params and size.params >= sum(
        p.numel() for n, p in model.named_parameters() if "bn" not in n and p.dim() > 1
    )


@pytest.mark.parametrize("cfg", [OpenVINOExportConfig(), OpenVINOExportConfig(source="torch")], ids=["onnx-dynamo", "torch"])
def test_openvino_other_routes_match_torch(cfg, digits, tmp_path):
    dm, x = digits
    model = _zoo("simple_cnn", dm.spec, x)
    res = export_model(model, "openvino", tmp_path / "m.xml", cfg, samples=x)
    assert res.parity.max_abs_diff <= 1e-4 and res.parity.top1_agreement == 1.0, res.parity.summary()
    assert res.artifact.meta["route"] == cfg.source


def test_openvino_fp16_within_fp16_thresholds_and_half_the_weights(resnet20, digits, tmp_path):
    from edgeopt.export import PARITY_THRESHOLDS

    _, x = digits
    r32 = export_model(resnet20, "openvino", tmp_path / "fp32.xml", FAST, samples=x)
    r16 = export_model(resnet20, "openvino", tmp_path / "fp16.xml", FAST.replace(precision="fp16"), samples=x)
    rep, thr = r16.parity, PARITY_THRESHOLDS["fp16"]
    assert r16.artifact.precision == "fp16" and rep.passed, rep.summary()
    assert rep.max_rel_diff <= thr.rtol and rep.cosine_similarity >= thr.min_cosine
    assert rep.top1_agreement >= thr.min_top1
    ratio = (tmp_path / "fp16.bin").stat().st_size / (tmp_path / "fp32.bin").stat().st_size
    assert 0.45 <= ratio <= 0.55, ratio
    assert r32.parity.max_abs_diff <= 1e-4


@pytest.fixture(scope="module")
def qdq_onnx(resnet20, digits, tmp_path_factory):
    """resnet20 quantized to QDQ int8 by onnxruntime on 128 real training digits."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    dm, _ = digits
    d = tmp_path_factory.mktemp("qdq")
    fp32 = export_model(resnet20, "onnx", d / "fp32.onnx", {"dynamo": False}, verify=False).artifact.path
    cal = dm.calibration(128).numpy()  # the train split: never the parity images

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": cal[i : i + 32]} for i in range(0, len(cal), 32)])

        def get_next(self):
            return next(self.batches, None)

    out = d / "int8.onnx"
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def test_openvino_int8_from_qdq_onnx(resnet20, digits, qdq_onnx, tmp_path):
    from edgeopt.export import PARITY_THRESHOLDS
    from edgeopt.runtime import get_runner

    _, x = digits
    cfg = OpenVINOExportConfig(precision="int8", onnx_path=str(qdq_onnx))
    res = export_model(resnet20, "openvino", tmp_path / "int8.xml", cfg, samples=x)
    rep, thr = res.parity, PARITY_THRESHOLDS["int8"]
    assert res.artifact.precision == "int8" and rep.passed, rep.summary()
    assert rep.cosine_similarity >= thr.min_cosine and rep.top1_agreement >= thr.min_top1
    precisions = get_runner(res.artifact).runtime_precisions()
    int8_convs = sum(n for (kind, prec), n in precisions.items() if kind == "Convolution" and prec in ("u8", "i8"))
    assert int8_convs >= 19, precisions  # resnet20: 19 3x3 convs + 2 shortcut 1x1 convs
    fp32_bin = export_model(resnet20, "openvino", tmp_path / "fp32.xml", FAST, verify=False).artifact.path.with_suffix(".bin")
    assert (tmp_path / "int8.bin").stat().st_size < 0.3 * fp32_bin.stat().st_size

    # the same file without a model at hand
    art = openvino_from_onnx(qdq_onnx, tmp_path / "plain.xml", resnet20.edgeopt_spec)
    assert art.precision == "int8" and art.meta["parity"]["status"] == "not run"
    out = get_runner(art).predict(x[:16].numpy())
    assert np.abs(out - get_runner(res.artifact).predict(x[:16].numpy())).max() == 0.0


def test_openvino_config_errors(qdq_onnx, resnet20, tmp_path):
    with pytest.raises(ConfigError, match="needs onnx_path"):
        OpenVINOExportConfig(precision="int8")
    with pytest.raises(ConfigError, match="declare precision='int8'"):
        export_model(resnet20, "openvino", tmp_path / "m.xml", {"onnx_path": str(qdq_onnx)})
    with pytest.raises(ConfigError, match="does not exist"):
        export_model(resnet20, "openvino", tmp_path / "m.xml", {"onnx_path": str(tmp_path / "nope.onnx")})
    with pytest.raises(ConfigError, match="'.xml' file"):
        export_model(resnet20, "openvino", tmp_path / "m.onnx", FAST)


def test_openvino_overwrite_leaves_one_consistent_pair(digits, tmp_path):
    from edgeopt.runtime import get_runner

    dm, x = digits
    a, b = _zoo("simple_cnn", dm.spec, x), _zoo("resnet20", dm.spec, x)
    export_model(a, "openvino", tmp_path / "m.xml", FAST, verify=False)
    res = export_model(b, "openvino", tmp_path / "m.xml", FAST, samples=x)  # replaces the pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml", "m.xml.edgeopt.json"]
    with torch.no_grad():
        ref = b(x[:8]).numpy()
    assert np.abs(get_runner(res.artifact).predict(x[:8].numpy()) - ref).max() <= 1e-4
