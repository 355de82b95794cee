"""Parity is judged relative to the logits' scale (``atol + rtol * max |logit|``) plus top-1
agreement, with a tolerance that the API, an export config dict and the CLI all take; a failed
export keeps its file, marked failed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeopt.errors import ConfigError, ExportMismatchError
from edgeopt.export import ParityThresholds, compare_logits, export_model
from edgeopt.export.parity import PARITY_THRESHOLDS

FAST = {"dynamo": False, "check_batches": []}  # the legacy exporter: ~0.1 s; parity on real samples only


@pytest.fixture(scope="module")
def big_logits(digits_cnn):
    """The trained digits simple_cnn with its classifier's weights and bias x1000: logits of order 1e4."""
    import copy

    m = copy.deepcopy(digits_cnn).eval()
    last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(1000.0)
        last.bias.mul_(1000.0)
    return m


def test_defaults_are_one_table():
    assert PARITY_THRESHOLDS["fp32"].rtol == 1e-5 and PARITY_THRESHOLDS["fp32"].atol == 1e-4
    assert PARITY_THRESHOLDS["fp16"].rtol == 1e-2 and PARITY_THRESHOLDS["int8"].rtol is None
    assert ParityThresholds.for_precision("fp32").allowed_abs_diff(100.0) == pytest.approx(1.1e-3)
    with pytest.raises(ConfigError, match="rtol"):
        ParityThresholds(rtol=-1.0)


def test_criterion_is_relative_to_the_logits_scale():
    rng = np.random.default_rng(0)
    ref = rng.normal(-100, 5, size=(64, 10)).astype(np.float32)  # efficientnet_b0-like logits near -100
    exact = ref * (1 + 1.2e-6 * rng.choice([-1.0, 1.0], size=ref.shape))  # float rounding, 1.2e-6 relative
    rep = compare_logits(ref, exact, ParityThresholds.for_precision("fp32"))
    assert rep.max_abs_diff > 1e-4  # the old fixed bound rejected this exact export
    assert rep.passed and rep.max_rel_diff < 2e-6 and rep.allowed_abs_diff == pytest.approx(1e-4 + 1e-5 * rep.logit_scale)
    assert "relative to the logits' scale" in rep.summary()
    wrong = compare_logits(ref, ref + 0.5, ParityThresholds.for_precision("fp32"))
    assert not wrong.passed and "rtol 1e-05 x max |logit|" in wrong.failures[0]


def test_a_tie_broken_by_rounding_is_not_a_top1_failure():
    ref = np.array([[1.0, 1.0 + 1e-6, 0.0], [3.0, 0.0, 0.0]], np.float32)  # sample 0: a tie
    out = np.array([[1.0 + 2e-6, 1.0, 0.0], [3.0, 0.0, 0.0]], np.float32)
    rep = compare_logits(ref, out, ParityThresholds.for_precision("fp32"))
    assert rep.top1_agreement == 0.5 and rep.top1_ties == 1 and rep.passed, rep.summary()
    flipped = np.array([[1.0, 1.0 + 1e-6, 0.0], [0.0, 3.0, 0.0]], np.float32)  # a real flip
    assert not compare_logits(ref, flipped, ParityThresholds.for_precision("fp32")).passed


def test_export_of_a_model_with_large_logits_passes(big_logits, digits_data, tmp_path):
    x, _ = digits_data.samples(128, split="test")
    res = export_model(big_logits, "onnx", tmp_path / "big.onnx", FAST, samples=x)
    rep = res.parity
    assert rep.passed and rep.logit_scale > 1e3, rep.summary()
    assert rep.max_abs_diff > 1e-4  # the old fixed bound would have failed (and deleted) this exact export
    assert rep.max_rel_diff <= 1e-5 and rep.top1_agreement == 1.0, rep.summary()  # measured ~1e-7 relative


def test_a_wrong_export_fails_keeps_the_file_and_says_where(big_logits, digits_data, tmp_path, monkeypatch):
    from edgeopt.runtime.onnxruntime_runner import OnnxRuntimeRunner

    real = OnnxRuntimeRunner.predict
    monkeypatch.setattr(OnnxRuntimeRunner, "predict", lambda self, b: real(self, b) + 1.0)
    x, _ = digits_data.samples(128, split="test")
    out = tmp_path / "wrong.onnx"
    with pytest.raises(ExportMismatchError) as e:
        export_model(big_logits, "onnx", out, FAST, samples=x)
    msg = e.value.one_line()
    assert "\n" not in msg and f"kept {out}" in msg and "max abs diff 1 " in msg and "relative" in msg
    assert out.is_file()  # kept for debugging, marked failed
    meta = json.loads((tmp_path / "wrong.onnx.edgeopt.json").read_text())["meta"]
    assert meta["status"] == "parity failed" and meta["parity"]["passed"] is False
    assert meta["parity"]["path"] == str(out)


def test_tolerance_through_the_export_config_dict(digits_data, tmp_path, monkeypatch):
    """``{"parity": {...}}`` in the export config (what a YAML file and ``edgeopt export --rtol``
    build) sets the tolerance; the rest of the dict is the format's config."""
    from edgeopt.models import create_model
    from edgeopt.runtime.onnxruntime_runner import OnnxRuntimeRunner

    torch.manual_seed(0)
    m = create_model("simple_cnn", digits_data.spec).eval()
    real = OnnxRuntimeRunner.predict
    monkeypatch.setattr(OnnxRuntimeRunner, "predict", lambda self, b: real(self, b) * (1 + 1e-3))
    x, _ = digits_data.samples(64, split="test")
    with pytest.raises(ExportMismatchError):
        export_model(m, "onnx", tmp_path / "a.onnx", FAST, samples=x)
    res = export_model(m, "onnx", tmp_path / "b.onnx", {**FAST, "parity": {"rtol": 2e-3}}, samples=x)
    assert res.parity.passed and res.parity.thresholds["rtol"] == 2e-3 and res.parity.thresholds["atol"] == 1e-4
    with pytest.raises(ConfigError, match="parity"):
        export_model(m, "onnx", tmp_path / "c.onnx", {**FAST, "parity": 0.1}, samples=x)
