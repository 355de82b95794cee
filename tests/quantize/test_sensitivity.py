"""Per-layer sensitivity scan and automatic mixed precision (``QuantConfig.max_drop``) on real digits.

The scan measures every Conv/Linear layer of simple_cnn in the fake-quant simulation (output
SQNR measured 48.8-53.2 dB). Mixed precision is checked at its two extremes: a budget no
configuration meets (zero loss with median-clipped activation ranges) keeps every layer float
(the artifact is fp32), a large budget keeps none.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from edgeopt.errors import ConfigError
from edgeopt.quantize._base import quantize
from edgeopt.quantize.config import QuantConfig
from edgeopt.quantize.layers import quantizable_layers
from edgeopt.quantize.sensitivity import scan_sensitivity

pytestmark = pytest.mark.filterwarnings("ignore")

LAYERS = ["features.0.0", "features.1.0", "features.3.0", "features.5.0", "fc"]


def test_scan_sensitivity(digits_cnn, digits_data, tmp_path):
    rep = scan_sensitivity(digits_cnn, digits_data, QuantConfig(), tmp_path, samples=512, progress=False)
    assert quantizable_layers(digits_cnn) == LAYERS
    assert sorted(r["layer"] for r in rep.rows) == sorted(LAYERS)  # one row per Conv/Linear layer
    assert rep.split == "val" and rep.samples == 143  # 512 asked, the whole validation split
    assert rep.float_acc >= 0.95 and rep.int8_acc >= rep.float_acc - 0.02  # measured 0.986 and 0.986
    for r in rep.rows:
        assert math.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 10.0, r  # measured >= 48.7 dB
        assert r["kind"] == ("Linear" if r["layer"] == "fc" else "Conv2d")
        assert r["params"] > 0
        assert r["recovery"] == pytest.approx(100 * (rep.float_acc - rep.int8_acc) - r["drop_all_but"], abs=2e-3)
    # most sensitive first: by what keeping the layer float recovers, then by low SQNR
    keys = [(-r["recovery"], -r["drop_alone"], r["sqnr_db"]) for r in rep.rows]
    assert keys == sorted(keys) and rep.ranking() == [r["layer"] for r in rep.rows]

    assert set(rep.files) == {"csv", "json", "png"}
    for f in rep.files.values():
        assert (tmp_path / f.rsplit("/", 1)[-1]).is_file()
    lines = (tmp_path / "sensitivity.csv").read_text().splitlines()
    assert len(lines) == len(rep.rows) + 1  # header + one line per layer
    rows = list(csv.DictReader(lines))
    assert [r["layer"] for r in rows] == rep.ranking()
    assert [float(r["sqnr_db"]) for r in rows] == [r["sqnr_db"] for r in rep.rows]
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["rows"] == rep.rows and saved["samples"] == 143
    assert (tmp_path / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", [-0.01, -100.0, 100.5, float("nan")])
def test_max_drop_outside_0_100_points_is_a_config_error(bad):
    # a negative budget asked int8 to beat fp32: only all-float met it, silently
    with pytest.raises(ConfigError, match=r"max_drop=.* must be in \[0, 100\]"):
        QuantConfig(max_drop=bad)


def test_mixed_precision_budget_no_layer_meets_keeps_all_float(digits_cnn, digits_data, tmp_path):
    # A zero budget with activation ranges clipped at their median (percentile 50, the
    # coarsest allowed): every int8 layer input loses half its range, so every
    # configuration with an int8 layer loses accuracy and no k < 5 meets the budget.
    cfg = QuantConfig(max_drop=0.0, calibration="percentile", percentile=50.0)
    res = quantize(digits_cnn, cfg, digits_data, tmp_path / "m", progress=False)
    mp = res.meta["mixed_precision"]
    assert mp["all_float"] is True
    assert mp["kept_float"] == LAYERS and res.float_layers == LAYERS
    assert res.artifact.precision == "fp32" and res.artifact.path.name == "m.onnx"
    assert res.warnings == ["no int8 configuration met max_drop; the artifact is float"]
    # the bisection over k = layers kept float: 0 fails, then 2, 3, 4 fail, so k = 5
    assert [t["k"] for t in mp["tried"]] == [0, 2, 3, 4]
    assert all(t["drop"] > 0.0 for t in mp["tried"])
    assert mp["max_drop"] == 0.0 and mp["samples"] == 143 and mp["split"] == "val"
    # the float file costs size against the all-int8 one (measured 3.82x)
    assert mp["cost"]["size_ratio"] > 3.0
    assert mp["cost"]["size_bytes_chosen"] == res.artifact.size_bytes
    side = res.artifact.meta["quantization"]
    assert side["all_float"] is True and side["mixed_precision"]["kept_float"] == LAYERS


def test_mixed_precision_large_budget_keeps_nothing_float(digits_cnn, digits_data, tmp_path):
    res = quantize(digits_cnn, QuantConfig(max_drop=100.0), digits_data, tmp_path / "m", progress=False)
    mp = res.meta["mixed_precision"]
    assert mp["all_float"] is False and mp["kept_float"] == [] and res.float_layers == []
    assert res.artifact.precision == "int8"
    assert len(mp["tried"]) == 1 and mp["tried"][0]["k"] == 0 and mp["tried"][0]["kept_float"] == 0
    assert mp["tried"][0]["drop"] <= 1.0  # measured 0.0 points on the 143 validation images
    assert mp["cost"]["size_ratio"] == 1.0  # the chosen file is the all-int8 one
    assert res.agreement["samples"] == 143 and res.agreement["top1_agreement"] >= 0.99


def test_mixed_precision_zero_budget_accepts_an_exact_tie(digits_cnn, digits_data, tmp_path):
    """max_drop=0: all-int8 loses nothing on validation (141/143 = 141/143), so it is chosen."""
    res = quantize(digits_cnn, QuantConfig(max_drop=0.0), digits_data, tmp_path / "m", progress=False)
    mp = res.meta["mixed_precision"]
    assert mp["tried"][0] == {"k": 0, "kept_float": 0, "val_acc": mp["float_acc"], "drop": 0.0,
                              "size_bytes": res.artifact.size_bytes}
    assert mp["kept_float"] == [] and len(mp["tried"]) == 1 and res.artifact.precision == "int8"
