"""Quantization honesty: a low agreement with the fake-quant reference and an accuracy lost on
the held-out check are warnings in the QuantResult, the sidecar, results.json rows and the
report (Markdown and HTML); a calibration that loses nothing says nothing."""

from __future__ import annotations

import json

import pytest

from edgeopt.quantize import _base
from edgeopt.quantize._base import AGREEMENT_FLOOR, quantize
from edgeopt.quantize.config import QuantConfig
from edgeopt.report.markdown import render_html, render_markdown

pytestmark = pytest.mark.filterwarnings("ignore")


def _rendered(res, name: str) -> tuple[str, str]:
    """The report of a results file whose one int8 row is built as pipeline._quantized_variants builds it."""
    row = {"name": name, "runtime": "onnxruntime",
           "quantization": {"agreement": res.agreement, "float_layers": res.float_layers, "warnings": res.warnings}}
    results = json.loads(json.dumps({"run": "t", "variants": [row]}))  # what results.json holds
    return render_markdown(results), render_html(results, [])


def test_low_agreement_is_a_warning_everywhere(digits_cnn, digits_data, tmp_path, monkeypatch):
    real = _base.top1_agreement

    def low(*args, **kwargs):  # the file "disagrees" with its reference on 7 % of images
        return {**real(*args, **kwargs), "top1_agreement": 0.93}

    monkeypatch.setattr(_base, "top1_agreement", low)
    res = quantize(digits_cnn, QuantConfig(), digits_data, tmp_path / "m", progress=False)
    assert AGREEMENT_FLOOR == 0.99
    (w,) = [w for w in res.warnings if "fake-quant PyTorch reference" in w]
    assert "only 93.00 % of top-1" in w and "floor 99 %" in w and "onnxruntime" in w
    assert w in res.to_dict()["warnings"]
    side = json.loads(res.artifact.sidecar_path.read_text())["meta"]["quantization"]
    assert w in side["warnings"]
    md, page = _rendered(res, "int8 onnxruntime")
    assert "## Warnings" in md and f"- **int8 onnxruntime**: {w}" in md
    assert "<h2>Warnings</h2>" in page and "only 93.00 % of top-1" in page


def test_a_calibration_that_loses_accuracy_says_so(digits_cnn, digits_data, tmp_path):
    """Percentile 50 clips half of every activation range: a real loss, named with its method."""
    res = quantize(digits_cnn, QuantConfig(calibration="percentile", percentile=50.0), digits_data,
                   tmp_path / "p50", progress=False)
    check = res.meta["held_out_check"]
    assert check["split"] == "val" and check["samples"] == 143 and check["drop_points"] > 1.0, check
    (w,) = [w for w in res.warnings if "loses" in w]
    assert "calibration percentile" in w and "minmax" in w and f"{check['drop_points']:.2f} points" in w
    assert "margin 1" in w
    side = json.loads(res.artifact.sidecar_path.read_text())["meta"]["quantization"]
    assert w in side["warnings"] and side["held_out_check"]["drop_points"] == check["drop_points"]
    md, page = _rendered(res, "int8 onnxruntime")
    assert w in md and "calibration percentile" in page
    # the margin is the user's: a wide one accepts the loss, accuracy_check=False skips the check
    wide = quantize(digits_cnn, QuantConfig(calibration="percentile", percentile=50.0, accuracy_margin=100.0),
                    digits_data, tmp_path / "wide", progress=False)
    assert not [w for w in wide.warnings if "loses" in w]
    off = quantize(digits_cnn, QuantConfig(accuracy_check=False), digits_data, tmp_path / "off", progress=False)
    assert "held_out_check" not in off.meta


def test_a_calibration_that_loses_nothing_says_nothing(digits_cnn, digits_data, tmp_path):
    res = quantize(digits_cnn, QuantConfig(), digits_data, tmp_path / "m", progress=False)
    check = res.meta["held_out_check"]
    assert check["drop_points"] <= 1.0 and res.warnings == [], (check, res.warnings)  # measured 0.0
    md, page = _rendered(res, "int8 onnxruntime")
    assert "Warnings" not in md and "Warnings" not in page


def test_the_agreement_warning_names_what_the_reference_does_not_simulate():
    from edgeopt.quantize._base import _unmodelled, agreement_warning
    from edgeopt.quantize.config import QuantConfig

    why = _unmodelled({"reference_requantizes": {"not_simulated": [
        "/features/features.1/block/block.1/Sigmoid_output_0", "/features/features.1/block/block.1/Mul_output_0"]}})
    w = agreement_warning({"samples": 512, "top1_agreement": 0.6, "max_abs_diff": 1.0}, QuantConfig(), why=why)
    assert "60.00 %" in w and "requantizes 2 tensor(s) the reference does not simulate (outputs of Mul, Sigmoid)" in w
    assert _unmodelled({}) == ""


def test_the_torch_held_out_warning_names_where_the_calibration_check_found_the_parting():
    meta = {"reference_divergence": {"nodes": [{
        "node": "conv_pw", "layer": "blocks.1.1.conv_pw", "op": "Conv2d", "codes_off": 1.7e-6, "max_lsb": 1,
        "reason": "the int8 Conv2d requantizes its int32 accumulator with a float32 multiplier"}]}}
    w = _base.agreement_warning({"samples": 512, "top1_agreement": 0.957, "max_abs_diff": 1.36},
                                QuantConfig(backend="torch"), why=_base._unmodelled(meta))
    assert "95.70 %" in w
    assert ("already parts from it at blocks.1.1.conv_pw (Conv2d, 0.00017 % of its codes off by up to 1 LSB: "
            "the int8 Conv2d requantizes") in w


def test_the_agreement_warning_says_whether_the_file_or_the_reference_is_off(digits_cnn, digits_data, tmp_path):
    from edgeopt.quantize import QuantConfig, quantize
    from edgeopt.quantize._base import _unmodelled

    res = quantize(digits_cnn, QuantConfig(), digits_data, tmp_path / "q", progress=False)
    graph = res.meta["qdq_graph_agreement"]
    assert graph["samples"] > 0 and graph["top1_agreement"] >= 0.99  # the file does what its QDQ graph says
    assert "gap is in the reference" in _unmodelled({"qdq_graph_agreement": graph})
    assert "fused int8 kernels" in _unmodelled({"qdq_graph_agreement": {"top1_agreement": 0.9}})
