"""export_model / verify_parity: config validation, mismatches, unsupported layers, sidecars."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.errors import ArtifactError, ConfigError, ExportMismatchError, UnsupportedModelError
from edgeopt.export import (
    EXPORTERS,
    OnnxExportConfig,
    ParityThresholds,
    compare_logits,
    export_model,
    list_formats,
    verify_parity,
)
from edgeopt.spec import ModelSpec, attach_spec

FAST = {"dynamo": False}  # the legacy exporter: ~0.1 s for these tiny models


def test_formats_registry():
    formats = list_formats()
    assert {"onnx", "torchscript", "openvino", "coreml", "tensorrt"} <= set(formats) and "onnx" in EXPORTERS
    assert formats == sorted(formats)
    assert "ONNX" in EXPORTERS.help("onnx")


def test_default_config_is_dynamo_opset18():
    cfg = OnnxExportConfig()
    assert (cfg.dynamo, cfg.opset, cfg.dynamic_batch, cfg.exporter) == (True, 18, True, "dynamo")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"opset": 17}, r"opset=17 must be in \[18, 23\]"),
        ({"dynamo": False, "opset": 21}, r"opset=21 must be in \[13, 20\]"),
        ({"example_batch": 1}, "example_batch"),
        ({"input_name": "x", "output_name": "x"}, "distinct"),
        ({"check_batches": (0,)}, "check_batches"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        OnnxExportConfig(**kwargs)


def test_bad_export_requests(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format 'onx'. Did you mean 'onnx'"):
        export_model(tiny_model, "onx", tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="unknown key"):
        export_model(tiny_model, "onnx", tmp_path / "m.onnx", {"opset_version": 18})
    with pytest.raises(ConfigError, match="OnnxExportConfig or a dict"):
        export_model(tiny_model, "onnx", tmp_path / "m.onnx", "fast")
    with pytest.raises(ConfigError, match="writes a '.onnx' file"):
        export_model(tiny_model, "onnx", tmp_path / "m.tflite", FAST)
    with pytest.raises(ConfigError, match="carries no ModelSpec"):
        export_model(nn.Linear(2, 2), "onnx", tmp_path / "m.onnx", FAST)
    assert list(tmp_path.iterdir()) == []


def test_export_writes_sidecar_lineage_and_restores_mode(tiny_model, digits_x, tmp_path):
    tiny_model.edgeopt_lineage = [{"step": "train", "epochs": 3}]
    tiny_model.train()
    res = export_model(tiny_model, "onnx", tmp_path / "m", FAST, samples=digits_x)  # suffix added
    assert tiny_model.training  # the flag is restored
    assert res.artifact.path == tmp_path / "m.onnx"
    side = json.loads((tmp_path / "m.onnx.edgeopt.json").read_text())
    assert side["kind"] == "edgeopt_artifact" and side["format"] == "onnx" and side["precision"] == "fp32"
    assert side["spec"]["input_shape"] == [1, 8, 8]
    assert side["meta"]["lineage"] == [
        {"step": "train", "epochs": 3},
        {"step": "export", "format": "onnx", "opset": 18, "exporter": "torchscript"},
    ]
    assert side["meta"]["parity"]["passed"] is True and side["meta"]["parity"]["n_samples"] == 128
    assert side["meta"]["parity"]["max_abs_diff"] <= 1e-5
    assert res.to_dict()["parity"]["top1_agreement"] == 1.0
    json.dumps(res.parity.to_dict())  # dict-able, JSON-ready


def test_no_samples_means_random_inputs_or_no_parity(tiny_model, tmp_path):
    res = export_model(tiny_model, "onnx", tmp_path / "a.onnx", FAST)
    assert res.parity.inputs == "random" and res.parity.n_samples == 32 and res.parity.passed
    res = export_model(tiny_model, "onnx", tmp_path / "b.onnx", FAST, verify=False)
    assert res.parity is None


def test_forced_mismatch_names_worst_sample(tiny_model, digits_x, tmp_path):
    art = export_model(tiny_model, "onnx", tmp_path / "m.onnx", FAST, samples=digits_x).artifact
    with torch.no_grad():  # change the model after export: the file no longer matches it
        tiny_model[5].weight[3, 7] += 0.5
    rep = verify_parity(tiny_model, art, digits_x)
    assert not rep.passed and rep.max_abs_diff > 1e-2
    # the report's worst output is the largest |diff| we compute ourselves
    from edgeopt.runtime import get_runner

    diff = np.abs(get_runner(art).predict(digits_x.numpy()) - get_runner(tiny_model).predict(digits_x.numpy()))
    s, c = np.unravel_index(diff.argmax(), diff.shape)
    assert (rep.worst_sample, rep.worst_class) == (s, c) == (rep.worst_sample, 3)
    assert rep.max_abs_diff == pytest.approx(diff.max(), rel=1e-6)
    with pytest.raises(ExportMismatchError) as e:
        rep.raise_if_failed()
    msg = e.value.one_line()
    assert f"sample {s}, class 3" in msg and "max abs diff" in msg and "\n" not in msg
    assert "= atol 0.0001 + rtol 1e-05 x max |logit|" in msg


_W = torch.linspace(0.0, 1.0, 64)  # pixel weights: a per-image number that rarely ties


class _DiffersInExport(nn.Module):
    """Adds 0.01 x (a weighted pixel sum) to every logit, only while being exported."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.flatten(1))
        if torch.onnx.is_in_onnx_export():
            y = y + 0.01 * (x.flatten(1) * _W).sum(1, keepdim=True)
        return y


def test_export_mismatch_raises_and_keeps_the_file_marked_failed(digits_data, digits_x, tmp_path):
    m = attach_spec(_DiffersInExport(), digits_data.spec).eval()
    cfg = OnnxExportConfig(dynamo=False, check_batches=())  # straight to the real-sample parity
    with pytest.raises(ExportMismatchError) as e:
        export_model(m, "onnx", tmp_path / "m.onnx", cfg, samples=digits_x)
    bump = (digits_x.flatten(1) * _W).sum(1).abs()
    top2 = bump.topk(2).values
    assert top2[0] - top2[1] > 1e-3  # a unique worst sample, far above float noise
    worst = int(bump.argmax())
    msg = e.value.one_line()
    assert f"worst output: sample {worst}," in msg and f"kept {tmp_path / 'm.onnx'}" in msg and "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.edgeopt.json"]
    side = json.loads((tmp_path / "m.onnx.edgeopt.json").read_text())["meta"]
    assert side["status"] == "parity failed" and side["parity"]["passed"] is False
    # verify=False keeps the file and reports the failure instead of raising
    res = export_model(m, "onnx", tmp_path / "m.onnx", cfg, samples=digits_x, verify=False)
    assert not res.parity.passed and res.parity.worst_sample == worst
    assert res.artifact.path.is_file()
    assert json.loads(res.artifact.sidecar_path.read_text())["meta"]["parity"]["passed"] is False


class _Eig(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 8, 8] -> [N, 10]
        m = x.flatten(1)[:, :4].reshape(-1, 2, 2)
        return torch.linalg.eigvals(m).real.repeat(1, 5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_unsupported_layer_is_named(dynamo, digits_data, tmp_path):
    m = nn.Sequential()
    m.add_module("stem", nn.Conv2d(1, 1, 1))
    m.add_module("spectral", _Eig())
    attach_spec(m, digits_data.spec)
    with pytest.raises(UnsupportedModelError) as e:
        export_model(m, "onnx", tmp_path / "m.onnx", {"dynamo": dynamo})
    msg = e.value.one_line()
    assert "layer 'spectral' (_Eig)" in msg and "aten.linalg_eig" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


class _BranchOnData(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # a Python branch on a tensor value
            return x.flatten(1)[:, :10]
        return -x.flatten(1)[:, :10]


def test_data_dependent_branch(digits_data, digits_x, tmp_path):
    """Why dynamo is the default: it refuses what the legacy tracer silently gets wrong."""
    from edgeopt.runtime import get_runner

    m = attach_spec(_BranchOnData(), digits_data.spec)
    # dynamo refuses, naming the source line
    with pytest.raises(UnsupportedModelError, match=r"in forward: `if x.mean\(\) > 0:"):
        export_model(m, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    # the legacy tracer bakes in the branch its example input took (batch 2, seed 0) ...
    sign = 1.0 if float(digits_data.spec.example_input(2).mean()) > 0 else -1.0
    same = sign * digits_x.abs()  # every image takes the traced branch
    cfg = OnnxExportConfig(dynamo=False, check_batches=())
    res = export_model(m, "onnx", tmp_path / "m.onnx", cfg, samples=same)
    assert res.parity.passed  # ... so parity on inputs taking that branch cannot see it
    other = -same
    wrong = np.abs(get_runner(res.artifact).predict(other.numpy()) - m(other).numpy()).max()
    assert wrong > 0.1  # and the file is wrong for the other branch


def test_fixed_batch_export(tiny_model, digits_x, tmp_path):
    from edgeopt.runtime import get_runner

    res = export_model(tiny_model, "onnx", tmp_path / "m.onnx", {"dynamo": False, "dynamic_batch": False})
    r = get_runner(res.artifact)
    assert r.predict(digits_x[:1].numpy()).shape == (1, 10)
    with pytest.raises(ArtifactError, match="fixed batch of 1"):
        r.predict(digits_x[:2].numpy())


def test_thresholds_by_precision():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 3, size=(200, 10)).astype(np.float32)
    fp16 = ref.astype(np.float16).astype(np.float32)  # real fp16 rounding, |err| <~ 3e-3
    fp32 = ParityThresholds.for_precision("fp32")
    assert compare_logits(ref, ref + 5e-5, fp32).passed
    rep = compare_logits(ref, fp16, fp32)
    assert not rep.passed and "max abs diff" in rep.failures[0]
    assert compare_logits(ref, fp16, ParityThresholds.for_precision("fp16"), precision="fp16").passed
    noisy = ref + rng.normal(0, 0.3, size=ref.shape).astype(np.float32)  # int8-like noise
    int8 = compare_logits(ref, noisy, ParityThresholds.for_precision("int8"), precision="int8")
    assert int8.passed and 0.98 < int8.cosine_similarity < 1 and int8.top1_agreement >= 0.9
    nan = compare_logits(ref, np.full_like(ref, np.nan), ParityThresholds.for_precision("int8"))
    assert not nan.passed and "NaN" in nan.failures[0]
    with pytest.raises(ConfigError):
        ParityThresholds(min_top1=1.5)
    with pytest.raises(ConfigError):
        ParityThresholds.for_precision("int4")


def test_verify_parity_tolerance_forms(tiny_model, digits_x, tmp_path):
    art = export_model(tiny_model, "onnx", tmp_path / "m.onnx", FAST).artifact
    assert verify_parity(tiny_model, art, digits_x, tolerance=0.0).thresholds["max_abs"] == 0.0
    rep = verify_parity(tiny_model, str(art.path), (digits_x, None), tolerance={"min_cosine": 0.999})
    # a dict overrides some of the precision's criteria and keeps the others
    assert rep.passed and rep.thresholds == {"rtol": 1e-5, "atol": 1e-4, "max_abs": None, "max_rel": None,
                                             "min_cosine": 0.999, "min_top1": 1.0}
    with pytest.raises(ConfigError, match="rtl"):
        verify_parity(tiny_model, art, digits_x, tolerance={"rtl": 1e-3})
    with pytest.raises(ConfigError, match="tolerance"):
        verify_parity(tiny_model, art, digits_x, tolerance="tight")
    with pytest.raises(ArtifactError, match=r"expects input of shape \[N, 1, 8, 8\]"):
        verify_parity(tiny_model, art, torch.zeros(4, 1, 16, 16))


def test_dynamo_export_is_one_self_contained_file(tmp_path):
    """torch 2.14's dynamo exporter writes FILE.onnx.data by default; ours must not."""
    import onnx

    spec = ModelSpec((1, 4, 4), 3, (0.0,), (1.0,))
    m = attach_spec(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), spec).eval()
    res = export_model(m, "onnx", tmp_path / "sub" / "m.onnx")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.onnx", "m.onnx.edgeopt.json"]
    moved = tmp_path / "moved.onnx"
    res.artifact.path.rename(moved)  # still loads alone: the weights are inside
    proto = onnx.load(str(moved))
    assert {i.name for i in proto.graph.initializer} and all(
        t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer
    )
    assert json.loads({p.key: p.value for p in proto.metadata_props}["edgeopt.spec"])["num_classes"] == 3


def test_nan_weights_are_a_numerical_error_not_an_export_mismatch(tiny_model, digits_x, tmp_path):
    from edgeopt.errors import NumericalError

    with torch.no_grad():
        tiny_model[0].weight[2, 0, 1, 1] = float("nan")
    with pytest.raises(NumericalError, match=r"^cannot export to onnx: tensor '0.weight' \[8, 1, 3, 3\] "
                                             r"holds 1 NaN and 0 Inf of 72 values"):
        export_model(tiny_model, "onnx", tmp_path / "m.onnx", FAST, samples=digits_x)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_inf_eager_outputs_on_the_samples_are_a_numerical_error(digits_data, digits_x, tmp_path):
    from edgeopt.errors import NumericalError

    class Overflow(nn.Module):  # finite weights, but float32 overflows on real inputs
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * 1e38 * 1e38

    m = attach_spec(Overflow(), digits_data.spec).eval()
    with pytest.raises(NumericalError, match=r"the PyTorch model itself outputs NaN/Inf on 8 of the first 8 "
                                             r"samples \(its weights are finite"):
        export_model(m, "onnx", tmp_path / "m.onnx", FAST, samples=digits_x)
