"""Where a torch.ao int8 model parts from its fake-quant reference, and why.

Measured on CIFAR-10 models trained briefly (x86, 7-bit activations, minmax, 256 calibration
images): torchvision mobilenet_v3_small agreed 69.9 % with its reference, regnet_y_400mf
38.7 %, efficientnet_b0 21.5 %; the first node to part was an SE block's global average
pool each time (its int8 kernel rounds the mean of the codes exactly, the float reference
lands ties either way), then the SE gate ``mul``. With the reference rounding those two ops
as the kernels do (:func:`match_int8_rounding`) the agreement is 99.2 %, 97.7 % and 90.2 %.
The tests below check the same on a two-block SE model small enough for a few seconds of CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeopt.quantize.divergence import divergence_warning, keep_float_patterns, locate_divergence
from edgeopt.quantize.int8_rounding import int8_global_avg_pool, int8_mul, match_int8_rounding
from edgeopt.quantize.math import sqnr

pytestmark = pytest.mark.filterwarnings("ignore")


class _SE(nn.Module):
    """Squeeze-excitation: global pool -> conv -> ReLU -> conv -> sigmoid, times the input."""

    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.pool, self.fc1, self.relu = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, r, 1), nn.ReLU()
        self.fc2, self.gate = nn.Conv2d(r, c, 1), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class _Toy(nn.Module):
    """3x16x16 -> 2x2 feature maps (where a mean of 4 codes is a tie 1 time in 4) -> 2 SE blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.se = nn.Sequential(_SE(32, 8), _SE(32, 8))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.se(self.down(self.stem(x)))), 1))


@pytest.fixture(scope="module")
def toy(synthetic_data):
    """(calibrated prepare_fx model, int8 model, images) with the backend's x86 qconfig."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from edgeopt.quantize._torch_common import calibrate, keepdim_means, quantized_engine, quiet
    from edgeopt.quantize.config import QuantConfig
    from edgeopt.quantize.torch_fx_qconfig import fx_qconfig_mapping

    torch.manual_seed(0)
    model = _Toy().eval()
    x = synthetic_data.calibration(512)
    with quantized_engine("x86"), quiet(), torch.no_grad():
        prepared = prepare_fx(copy.deepcopy(model), fx_qconfig_mapping(QuantConfig(backend="torch"), [], False),
                              (x[:2],))
        calibrate(prepared, x)
        int8 = keepdim_means(convert_fx(copy.deepcopy(prepared)))
    return prepared, int8, x


def _reference(prepared, matched: bool):
    from torch.ao.quantization.quantize_fx import convert_to_reference_fx

    ref = convert_to_reference_fx(copy.deepcopy(prepared))
    if matched:
        # 2 SE squeezes + the head pool
        assert match_int8_rounding(ref) == {"global_avg_pool": 3, "mean": 0, "mul": 2, "cat": 0, "quantization_points": 0}
    return ref


def _codes(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """The uint8 codes the reference's next quantize node gives ``x``."""
    return torch.quantize_per_tensor(x, scale, zp, torch.quint8).int_repr()


def test_the_reference_rounds_pool_and_mul_code_for_code_as_the_kernels():
    torch.manual_seed(0)
    for (h, w), zp in (((2, 2), 3), ((2, 2), 0), ((4, 4), 64), ((3, 3), 7), ((8, 8), 5), ((6, 6), 3), ((5, 6), 127)):
        nchw = torch.quantize_per_tensor(torch.rand(8, 16, h, w) * 3, 0.05, zp, torch.quint8)
        for q in (nchw.contiguous(memory_format=torch.channels_last), nchw):  # int8 conv outputs, requantized ops
            cl = q.is_contiguous(memory_format=torch.channels_last)
            kernel = torch.nn.functional.adaptive_avg_pool2d(q, 1).int_repr()
            assert torch.equal(_codes(int8_global_avg_pool(q, cl), 0.05, zp), kernel), (h, w, zp, cl)
        # the float mean rounds some of the exact ties (1 in 4 on 2x2) the other way
        floatmean = _codes(nchw.dequantize().mean((2, 3), keepdim=True), 0.05, zp)
        kernel = torch.nn.functional.adaptive_avg_pool2d(nchw.contiguous(memory_format=torch.channels_last), 1)
        if h * w == 4:  # measured 2.3 % (zp 3) and 3.1 % (zp 0) of the pooled values
            assert (floatmean != kernel.int_repr()).float().mean() > 0.01, zp
    gate = torch.quantize_per_tensor(torch.rand(8, 16, 1, 1), 1 / 256, 0, torch.quint8)  # sigmoid's fixed qparams
    feat = torch.quantize_per_tensor(torch.rand(8, 16, 4, 4) * 6, 6 / 127, 0, torch.quint8)
    for scale, zp in ((6 / 127, 0), (0.0472, 3), (0.031, 10)):
        kernel = torch.ops.quantized.mul(gate, feat, scale, zp).int_repr()
        assert torch.equal(_codes(int8_mul(gate, feat, scale, zp), scale, zp), kernel), (scale, zp)
        if scale == 6 / 127:  # the SE case: out scale = the features' (gate <= 1): the float mul lands on ties
            assert (_codes(gate.dequantize() * feat.dequantize(), scale, zp) != kernel).sum() > 0  # measured 5


def test_the_locator_names_the_se_pool_where_the_outputs_part(toy):
    prepared, int8, x = toy
    found = locate_divergence(_reference(prepared, matched=False), int8, x[:64])
    first = found[0]
    assert (first["layer"], first["op"], first["node"]) == ("se.0.pool", "AdaptiveAvgPool2d", "se_0_pool")
    assert first["sqnr_before_db"] is None  # identical up to there
    assert 35.0 <= first["sqnr_after_db"] <= 42.0  # measured 38.2 dB
    assert 0.02 <= first["codes_off"] <= 0.06 and first["max_lsb"] == 1  # 3.8 % of pooled values off by 1
    assert "average pool" in first["reason"] and "half to even" in first["reason"]
    assert {d["op"] for d in found} <= {"AdaptiveAvgPool2d", "mul"}


def test_a_reference_that_rounds_like_the_kernels_matches_them(toy):
    prepared, int8, x = toy
    plain, matched = _reference(prepared, matched=False), _reference(prepared, matched=True)
    with torch.no_grad():
        got = int8(x[:256]).float()
        before, after = sqnr(plain(x[:256]), got), sqnr(matched(x[:256]), got)
    assert before < 50.0 and after >= 60.0, (before, after)  # measured 43.8 dB -> inf (identical logits)
    left = locate_divergence(matched, int8, x[:64])
    assert all(d["op"] not in ("AdaptiveAvgPool2d", "mul") for d in left), left


def test_the_warning_names_the_layer_the_reason_and_only_a_measured_fix():
    node = {"node": "features_1_block_1_avgpool", "layer": "features.1.block.1.avgpool", "op": "AdaptiveAvgPool2d",
            "sqnr_before_db": None, "sqnr_after_db": 39.53, "codes_off": 0.00293, "max_lsb": 1,
            "reason": "the int8 average pool rounds the mean of the integer codes half to even"}
    conv = dict(node, node="features_2_block_0_0", layer="features.2.block.0.0", op="Conv2d")
    keep = keep_float_patterns([node, conv], ["features.1.block.1.fc1", "features.1.block.1.fc2", "features.2.block.0.0"])
    assert keep == ["features.1.block.1", "features.2.block.0.0"]
    w = divergence_warning(0.699, [node, conv], keep, 0.995)
    assert w.startswith("the torch.ao reference model agrees with the int8 model on only 69.9 % of calibration")
    assert ("the outputs part at features.1.block.1.avgpool (AdaptiveAvgPool2d, SQNR inf -> 39.5 dB, "
            "0.29 % of its codes off by up to 1 LSB): the int8 average pool rounds") in w
    assert "also at features.2.block.0.0 (Conv2d)" in w
    assert "brings the agreement to 99.5 %: keep_float=['features.1.block.1', 'features.2.block.0.0']" in w
    assert "--keep-float features.1.block.1 --keep-float features.2.block.0.0" in w and "\n" not in w
    no = divergence_warning(0.699, [node], keep[:1], 0.97)
    assert "keep_float=" not in no and "--keep-float" not in no and "was tried: 97.0 %" in no
    assert "--backend onnxruntime" in no


def test_the_torch_backend_warning_says_where_and_why(synthetic_data, tmp_path, monkeypatch):
    """The backend's own path: a low agreement (forced here: this small model agrees 100 %)
    is explained by the located node, recorded in the meta, and the keep-float re-check runs."""
    from edgeopt.quantize import torch_fx_check
    from edgeopt.quantize._base import quantize
    from edgeopt.quantize.config import QuantConfig
    from edgeopt.spec import attach_spec

    calls = []
    real = torch_fx_check.agreement

    def first_low(a, b, x):
        calls.append(real(a, b, x))
        return 0.5 if len(calls) == 1 else calls[-1]

    monkeypatch.setattr(torch_fx_check, "agreement", first_low)
    # the reference as it was before it rounded like the kernels: its SE pool parts from the int8 one
    monkeypatch.setattr(torch_fx_check, "match_int8_rounding", lambda ref, *args, **kwargs: {})
    torch.manual_seed(0)
    model = attach_spec(_Toy().eval(), synthetic_data.spec)
    res = quantize(model, QuantConfig(backend="torch", engine="x86", accuracy_check=False), synthetic_data,
                   tmp_path / "toy", progress=False)
    (w,) = [w for w in res.warnings if "reference model agrees" in w]
    assert "only 50.0 %" in w and "part at se.0.pool (AdaptiveAvgPool2d, SQNR inf -> " in w
    assert "rounds the mean of the integer codes half to even" in w
    div = res.meta["reference_divergence"]
    assert div["nodes"][0]["layer"] == "se.0.pool" and div["keep_float"][0] == "se.0"
    assert len(calls) == 2 and div["keep_float_agreement"] == calls[1] >= 0.99  # measured on a re-quantized model
    assert "keep_float=['se.0'" in w


def test_docstring_examples():
    import doctest

    from edgeopt.quantize import (
        divergence,
        int8_rounding,
        torch_divergence_causes,
        torch_int8_kernels,
    )

    for mod in (divergence, int8_rounding, torch_divergence_causes, torch_int8_kernels):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, mod.__name__
