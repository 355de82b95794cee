"""TFLite export (litert-torch) and the ``litert`` runtime, on real digits images.

* fp32: every zoo model (``list_models()``) at 1x8x8, BatchNorm statistics estimated on
  real images first, compared with PyTorch on 256 real test images: max abs diff <= 1e-4,
  max rel diff <= 1e-4, 100 % top-1 agreement (measured: <= 3.4e-5 abs on mobilenetv2,
  ~1e-6 on simple_cnn). Conversion takes 6-26 s per model on one core, so only
  simple_cnn and resnet20 run in the quick suite; the rest are marked ``slow``.
* fp16 and int8 on *trained* simple_cnn (quick) and mobilenetv2 (slow): the project's
  parity thresholds for the precision (``PARITY_THRESHOLDS``), and for int8 a test
  accuracy within 2 points of the fp32 model (measured: 0.0 and +0.3 points).
* The runner: any batch size on a batch-1 file, corrupt / truncated files and a wrong
  input shape are one-line ArtifactErrors.

Runs only where litert-torch is installed (``pip install "edgeopt[tflite]"``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")

from edgeopt.errors import ArtifactError, ConfigError
from edgeopt.export import PARITY_THRESHOLDS, TFLiteExportConfig, export_model
from edgeopt.models import create_model, list_models
from edgeopt.runtime import get_runner

_QUICK = {"simple_cnn", "resnet20"}
INT8_MAX_ACC_DROP = 0.02  # int8 test accuracy may be at most 2 points below fp32


def _calibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running mean/var to the exact statistics of ``x``."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for chunk in x[:128].split(64):
            model(chunk)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


@pytest.fixture(scope="module")
def real_x(digits_data):
    x, _ = digits_data.samples(256, split="test")
    return x


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in _QUICK else (pytest.mark.slow,)) for n in list_models()]
)
def test_tflite_fp32_matches_torch_on_real_images(name, digits_data, real_x, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, digits_data.spec)
    _calibrate_bn(model, real_x)

    res = export_model(model, "tflite", tmp_path / f"{name}.tflite", samples=real_x)

    rep = res.parity
    assert rep.n_samples == 256 and rep.inputs == "real" and rep.runtime == "litert"
    assert rep.max_abs_diff <= 1e-4, rep.summary()
    assert rep.max_rel_diff <= 1e-4, rep.summary()
    assert rep.top1_agreement == 1.0, rep.summary()
    art = res.artifact
    assert art.format == "tflite" and art.precision == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.tflite", f"{name}.tflite.edgeopt.json"]
    assert art.meta["input"]["shape"] == [1, 1, 8, 8]  # NCHW, as every edgeopt runner takes
    assert art.meta["input"]["dtype"] == "float32"
    assert art.meta["lineage"][-1] == {"step": "export", "format": "tflite", "exporter": "litert-torch"}
    assert not model.training


# -- fp16 and int8 on trained models ------------------------------------------------------


def _train(name: str, data, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, data.spec)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for ep in range(epochs):
        for xb, yb in data.loader("train", 64, shuffle=True, seed=ep):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(digits_data, tmp_path_factory):
    """name -> (trained model, its fp32 TFLite artifact); each built once per module.

    simple_cnn: ~8 s to train, 98 % test accuracy; mobilenetv2: ~40 s, 88 %.
    """
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            model = _train(name, digits_data, epochs=5)
            path = tmp_path_factory.mktemp(name) / "fp32.tflite"
            x, _ = digits_data.samples(360, split="test")
            cache[name] = (model, export_model(model, "tflite", path, samples=x).artifact)
        return cache[name]

    return get


def _accuracy(runner, x, y) -> float:
    return float((runner.predict(x.numpy()).argmax(1) == y.numpy()).mean())


@pytest.mark.parametrize(
    "name, precision",
    [
        ("simple_cnn", "fp16"),
        ("simple_cnn", "int8"),
        pytest.param("mobilenetv2", "fp16", marks=pytest.mark.slow),
        pytest.param("mobilenetv2", "int8", marks=pytest.mark.slow),
    ],
)
def test_tflite_fp16_int8_meet_precision_thresholds(name, precision, trained, digits_data, tmp_path):
    model, fp32 = trained(name)
    x_test, y_test = digits_data.samples(360, split="test")  # the whole test split

    res = export_model(
        model, "tflite", tmp_path / f"{precision}.tflite", TFLiteExportConfig(precision=precision),
        samples=x_test, calibration=digits_data.calibration(512),
    )  # verify=True: raises if the precision's thresholds fail

    art, rep = res.artifact, res.parity
    assert art.precision == precision and rep.precision == precision
    assert rep.thresholds == PARITY_THRESHOLDS[precision].to_dict() and rep.passed, rep.summary()
    side = json.loads(art.sidecar_path.read_text())
    assert side["precision"] == precision
    acc32 = _accuracy(get_runner(fp32), x_test, y_test)
    acc = _accuracy(get_runner(art), x_test, y_test)
    if precision == "fp16":
        # float16 weights: half the file, float32 arithmetic
        assert art.size_bytes < 0.55 * fp32.size_bytes
        assert rep.max_rel_diff <= 1e-2 and acc == acc32
    else:
        q = side["meta"]["input_quantization"]
        assert q["dtype"] == "int8" and q["scale"] > 0 and -128 <= q["zero_point"] <= 127
        assert side["meta"]["output_quantization"]["dtype"] == "int8"
        assert side["meta"]["calibration_samples"] == 512
        assert art.size_bytes < 0.35 * fp32.size_bytes  # int8 weights
        assert acc >= acc32 - INT8_MAX_ACC_DROP, (acc, acc32)
    assert acc32 >= (0.95 if name == "simple_cnn" else 0.85)  # the models really learned digits


def test_int8_without_calibration_is_one_config_error(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"needs calibration data: pass calibration="):
        export_model(tiny_model, "tflite", tmp_path / "m.tflite", {"precision": "int8"})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"precision": "int4"}, "precision='int4' must be one of fp32, fp16, int8"),
        ({"calibration_samples": 0}, "calibration_samples=0 must be in"),
        ({"batch_size": 0}, "batch_size=0 must be in"),
        ({"per_channel": "yes"}, "per_channel"),
    ],
)
def test_bad_config_is_a_config_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        TFLiteExportConfig.from_dict(bad)


# -- the litert runner -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tflite_artifact(digits_data, real_x, tmp_path_factory):
    """A batch-1 fp32 TFLite file of simple_cnn and its model (converted once, ~6 s)."""
    torch.manual_seed(0)
    model = create_model("simple_cnn", digits_data.spec)
    _calibrate_bn(model, real_x)
    path = tmp_path_factory.mktemp("tfl") / "m.tflite"
    return export_model(model, "tflite", path, samples=real_x).artifact, model


def test_runner_takes_any_batch_on_a_batch1_file(tflite_artifact, real_x):
    art, model = tflite_artifact
    runner = get_runner(art, threads=2)
    assert runner.name == "litert" and runner.threads == 2 and runner.file_batch == 1
    with torch.no_grad():
        ref = model(real_x[:7]).numpy()
    out7 = runner.predict(real_x[:7].numpy())
    assert out7.shape == (7, 10) and out7.dtype == np.float32
    assert np.abs(out7 - ref).max() <= 1e-4
    assert np.abs(runner.predict(real_x[3:4].numpy()) - out7[3:4]).max() == 0.0
    assert np.abs(get_runner(art, xnnpack=False).predict(real_x[:7].numpy()) - ref).max() <= 1e-4


def test_runner_batch2_file_pads_the_last_chunk(tiny_model, digits_x, tmp_path):
    res = export_model(tiny_model, "tflite", tmp_path / "b2.tflite", {"batch_size": 2}, samples=digits_x)
    runner = get_runner(res.artifact)
    assert runner.file_batch == 2 and res.artifact.meta["input"]["shape"] == [2, 1, 8, 8]
    with torch.no_grad():
        ref = tiny_model(digits_x[:5]).numpy()
    assert np.abs(runner.predict(digits_x[:5].numpy()) - ref).max() <= 1e-4  # 2 + 2 + 1 (padded)


def test_runner_wrong_shape_and_dtype_are_artifact_errors(tflite_artifact):
    runner = get_runner(tflite_artifact[0])
    with pytest.raises(ArtifactError, match=r"expects input of shape \[N, 1, 8, 8\].*got \[2, 3, 8, 8\]"):
        runner.predict(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ArtifactError, match="normalised float32"):
        runner.predict(np.zeros((2, 1, 8, 8), np.uint8))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_tflite_is_one_artifact_error(tflite_artifact, tmp_path, damage):
    from edgeopt.artifact import Artifact

    art = tflite_artifact[0]
    data = art.path.read_bytes()
    bad = {"truncated": data[: len(data) // 3], "garbage": b"not a flatbuffer" * 10, "empty": b""}[damage]
    p = tmp_path / "bad.tflite"
    p.write_bytes(bad)
    Artifact(p, "tflite", art.spec, meta=art.meta).save_sidecar()
    with pytest.raises(ArtifactError) as err:
        get_runner(p)
    line = err.value.one_line()
    assert "\n" not in line and "bad.tflite" in line and "re-export" in line


def test_sidecar_of_another_shape_is_an_artifact_error(tflite_artifact, tmp_path):
    import dataclasses
    import shutil

    from edgeopt.artifact import Artifact

    art = tflite_artifact[0]
    p = tmp_path / "m.tflite"
    shutil.copy(art.path, p)
    Artifact(p, "tflite", dataclasses.replace(art.spec, input_shape=(3, 8, 8), mean=(0,) * 3, std=(1,) * 3)).save_sidecar()
    with pytest.raises(ArtifactError, match=r"takes input \[1, 1, 8, 8\] but its sidecar says"):
        get_runner(p)


def test_tflite_without_sidecar_says_to_reexport(tflite_artifact, tmp_path):
    import shutil

    p = tmp_path / "lonely.tflite"
    shutil.copy(tflite_artifact[0].path, p)
    with pytest.raises(ArtifactError, match="no sidecar.*export_model\\(model, 'tflite', path\\)"):
        get_runner(p)


def test_litert_version_is_reported():
    from edgeopt.runtime import RUNNERS

    assert RUNNERS.get("litert").version().count(".") >= 1  # e.g. "2.3.0"
