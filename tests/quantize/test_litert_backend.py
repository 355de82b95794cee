"""The litert quantization backend (int8 .tflite through litert-torch's PT2E quantizer) on real digits.

Static int8 of simple_cnn, run by the LiteRT interpreter: agrees with its fake-quant reference
on >= 99 % of the 143 validation images (measured 100 %) and stays within 1.5 points of the
float model on the 359-image test split (measured 0 points).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.quantize._base import quantize
from edgeopt.quantize.config import QuantConfig
from edgeopt.runtime import get_runner


def _tflite_missing() -> str | None:
    from edgeopt.export.tflite_export import tflite_available

    return tflite_available()


pytestmark = [
    pytest.mark.filterwarnings("ignore"),
    pytest.mark.skipif(_tflite_missing() is not None, reason=f"LiteRT unavailable: {_tflite_missing()}"),
]


def _test_accuracy(predict, data) -> float:
    x, y = data.samples(10_000, split="test")  # the whole test split, 359 images
    logits = np.asarray(predict(x))
    assert logits.shape == (359, 10)
    return float((logits.argmax(1) == y.numpy()).mean())


@pytest.fixture(scope="module")
def static(digits_cnn, digits_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("litert") / "m"
    return quantize(digits_cnn, QuantConfig(backend="litert"), digits_data, out, progress=False)


def test_static_int8(static, digits_cnn, digits_data):
    res = static
    assert res.artifact.path.name == "m.tflite" and res.artifact.format == "tflite"
    assert res.artifact.precision == "int8" and res.float_layers == []
    assert res.artifact.meta["batch_size"] == 1
    assert res.agreement["samples"] == 143 == len(digits_data.split("val"))
    assert res.agreement["top1_agreement"] >= 0.99  # measured 1.0
    with torch.no_grad():
        acc_float = _test_accuracy(lambda x: digits_cnn(x).numpy(), digits_data)
    runner = get_runner(res.artifact, threads=1)
    acc_int8 = _test_accuracy(lambda x: runner.predict(x.numpy()), digits_data)
    assert acc_float >= 0.95
    assert acc_int8 >= acc_float - 0.015, (acc_int8, acc_float)  # measured 0.9833 vs 0.9833


def test_reference_takes_any_batch(static, digits_data):
    """The reference graph is captured with batch 1 (as the converter wants); it still runs a batch."""
    x, _ = digits_data.samples(5, split="val")
    with torch.no_grad():
        batched = static.reference(x)
        one_by_one = torch.cat([static.reference(x[i:i + 1]) for i in range(5)])
    assert batched.shape == (5, 10) and torch.equal(batched, one_by_one)


def test_keep_float_is_refused(digits_cnn, digits_data, tmp_path):
    with pytest.raises(ConfigError, match="onnxruntime") as e:
        quantize(digits_cnn, QuantConfig(backend="litert", keep_float=("fc",)), digits_data, tmp_path / "k",
                 progress=False)
    assert "\n" not in str(e.value) and "keep_float" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_entropy_calibration_is_refused(digits_cnn, digits_data, tmp_path):
    with pytest.raises(ConfigError, match="calibration='entropy'") as e:
        quantize(digits_cnn, QuantConfig(backend="litert", calibration="entropy"), digits_data, tmp_path / "e",
                 progress=False)
    assert "onnxruntime" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
