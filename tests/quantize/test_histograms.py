"""Weight/activation histograms and the sensitivity chart of int8 quantization."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.quantize.histograms import (
    collect_activations,
    plot_activation_histograms,
    plot_sensitivity,
    plot_weight_histograms,
    quant_stats,
)


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless the file starts as a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )


@pytest.fixture(scope="module")
def samples():
    return torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _qparams(model, acts):
    qp = {}
    for name in ("0", "2", "6"):
        w = dict(model.named_modules())[name].weight.detach()
        a = acts[name]
        lo, hi = min(float(a.min()), 0.0), float(a.max())
        s = (hi - lo) / 255
        per_channel = name != "6"
        qp[name] = {
            "weight": {
                "scale": w.abs().flatten(1).amax(1) / 127 if per_channel else float(w.abs().max()) / 127,
                "zero_point": torch.zeros(w.shape[0], dtype=torch.int64) if per_channel else 0,
                "dtype": "int8",
                "axis": 0 if per_channel else None,
            },
            "input": {"scale": s, "zero_point": round(-lo / s), "dtype": "uint8"},
        }
    return qp


def test_collect_activations_equals_a_manual_forward(model, samples):
    acts = collect_activations(model, samples, ["2", "6"], batch_size=7)  # 3 batches
    with torch.no_grad():
        x2 = model[1](model[0](samples))  # the input of layer "2"
        x6 = model[5](model[4](model[3](model[2](x2))))
    assert acts["2"].shape == (20 * 4 * 8 * 8,) and acts["6"].shape == (20 * 6,)
    torch.testing.assert_close(acts["2"], x2.flatten(), rtol=0, atol=1e-6)
    torch.testing.assert_close(acts["6"], x6.flatten(), rtol=0, atol=1e-6)
    assert model.training  # the flag is restored after the eval-mode pass


def test_collect_activations_subsamples_in_order_and_is_seeded(model, samples):
    full = collect_activations(model, samples, ["0"])["0"]
    a = collect_activations(model, samples, ["0"], max_values=500, batch_size=6)["0"]
    b = collect_activations(model, samples, ["0"], max_values=500, batch_size=6)["0"]
    assert a.shape == (500,) and torch.equal(a, b)
    # every kept value is one of the real ones, in the order it was seen
    pos = [int((full == v).nonzero()[0]) for v in a[:50]]
    assert pos == sorted(pos)
    # a uniform subsample: its mean is within 4 standard errors of the full mean
    assert abs(float(a.mean() - full.mean())) < 4 * float(full.std()) / math.sqrt(500)


def test_unknown_layer_names_it_and_lists_valid_ones(model, samples):
    with pytest.raises(ConfigError, match=r"'features\.9'.*0, 1, 2"):
        collect_activations(model, samples, ["0", "features.9"])
    with pytest.raises(ConfigError, match="conv9"):
        plot_weight_histograms(model, ["conv9"], {}, "unused.png")


def test_quant_stats_known_case():
    # int8, scale 0.5: range [-64, 63.5]; 0.26 rounds to 0.5 (error 0.24), 100 clamps to 63.5
    qp = {"scale": 0.5, "zero_point": 0, "dtype": "int8", "axis": None}
    x = torch.tensor([1.0, -1.0, 0.26, 100.0])
    s = quant_stats(x, qp)
    assert s["sqnr_db"] == pytest.approx(10 * math.log10((2 + 0.26**2 + 100**2) / (0.24**2 + 36.5**2)))
    assert s["clipped_fraction"] == 0.25
    assert quant_stats(torch.tensor([0.5, -1.0]), qp)["sqnr_db"] == math.inf  # on the grid: exact
    # uint8 with a zero point: range [(0 - 10) * 0.1, (255 - 10) * 0.1] = [-1.0, 24.5]
    u8 = {"scale": 0.1, "zero_point": 10, "dtype": "uint8"}
    s = quant_stats(torch.tensor([-1.0, -1.04, -1.2, 24.5, 24.6, 30.0]), u8)
    assert s["clipped_fraction"] == pytest.approx(3 / 6)  # -1.04 rounds onto the edge: kept


def test_quant_stats_per_channel():
    w = torch.tensor([[0.25, 0.75], [2.5, -2.5]])
    qp = {"scale": torch.tensor([0.5, 1.0]), "zero_point": torch.tensor([0, 0]), "dtype": "int8",
          "axis": 0}
    # half to even: 0.25/0.5 = 0.5 -> 0; 0.75/0.5 = 1.5 -> 2 (1.0); 2.5 -> 2; -2.5 -> -2
    noise = 0.25**2 + 0.25**2 + 0.5**2 + 0.5**2
    signal = 0.25**2 + 0.75**2 + 2 * 2.5**2
    assert quant_stats(w, qp)["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise))
    with pytest.raises(ConfigError, match="3 values for 2 channels"):
        quant_stats(w, {**qp, "scale": torch.ones(3)})


def test_histogram_pngs(model, samples, tmp_path):
    acts = collect_activations(model, samples, ["0", "2", "6"])
    qp = _qparams(model, acts)
    qp["2"].pop("input")  # a layer without input qparams has no activation panel
    w = plot_weight_histograms(model, ["0", "2", "6"], qp, tmp_path / "figs" / "weights.png")
    a = plot_activation_histograms(acts, qp, tmp_path / "acts.png", max_layers=12)
    one = plot_weight_histograms(model, ["0", "2", "6"], qp, tmp_path / "one.png", max_layers=1)
    ww, wh = _png_size(w)
    assert (ww, wh) == (1320, 320)  # 3 panels in one row of 4.4 x 3.2 in at 100 dpi
    assert _png_size(a) == (880, 320)  # 2 panels
    assert _png_size(one) == (440, 320)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_sensitivity_png_grows_with_layer_count(tmp_path):
    rows = [
        {"layer": f"features.{i}.conv", "drop_alone": 0.05 * i, "drop_all_but": 1.0 - 0.04 * i,
         "sqnr_db": 30.0 - 0.2 * i}
        for i in range(60)
    ]
    rows[3]["sqnr_db"] = math.inf  # exact output: drawn as a label, not a bar
    rows[4]["drop_all_but"] = None  # not measured
    w60, h60 = _png_size(plot_sensitivity(rows, tmp_path / "s60.png"))
    w3, h3 = _png_size(plot_sensitivity(rows[:3], tmp_path / "s3.png"))
    assert w60 == w3 == 1000 and h60 == round(100 * (2.0 + 0.26 * 60)) and h3 == round(100 * (2.0 + 0.26 * 3))
    with pytest.raises(ConfigError, match="drop_alone"):
        plot_sensitivity([{"layer": "x"}], tmp_path / "bad.png")
