"""Core ML export: every zoo model converts to an ML Program whose package validates.

Core ML cannot predict on Linux, so parity is recorded as "not run" (never a pass) and
the package is checked instead: input ``input`` [N, 1, 8, 8] with a flexible batch,
output ``logits`` [N, 10], weights stored in the precision asked for. fp16 and int8-weight
packages are measured against fp32 (bytes on disk, ratio asserted).
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("coremltools")

from edgeopt.artifact import Artifact
from edgeopt.errors import ArtifactError, ConfigError, MissingDependencyError
from edgeopt.export import CoreMLExportConfig, export_model, validate_package
from edgeopt.models import create_model, list_models

off_macos = pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS")


@pytest.fixture(scope="module")
def digits():
    from edgeopt.data import get_dataset

    dm = get_dataset("digits")
    x, _ = dm.samples(64, split="test")
    return dm, x


def _zoo(name, spec, x):
    torch.manual_seed(0)
    model = create_model(name, spec)
    model.train()
    with torch.no_grad():  # real BatchNorm statistics
        model(x)
    return model.eval()


@off_macos
@pytest.mark.parametrize("name", list_models())
def test_coreml_converts_and_validates_every_zoo_model(name, digits, tmp_path):
    from edgeopt.evaluate import measure_size

    dm, x = digits
    res = export_model(_zoo(name, dm.spec, x), "coreml", tmp_path / f"{name}.mlpackage", samples=x)
    art = res.artifact
    assert res.parity is None  # not a pass: not run
    assert art.meta["parity"] == {"status": "not run", "reason": "CoreML predicts only on macOS"}
    v = art.meta["validation"]
    assert v["input_shape"][1:] == [1, 8, 8] and v["batch_range"][0] == 1
    assert v["output_shape"] == [None, 10]
    assert set(v["weight_dtypes"]) == {"FLOAT32"}
    assert art.path.is_dir() and art.precision == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.mlpackage", f"{name}.mlpackage.edgeopt.json"]
    assert Artifact.load(art.path).meta["validation"] == v  # a folder artifact loads back
    assert measure_size(art).bytes == art.size_bytes > 0


@pytest.fixture(scope="module")
def resnet20_packages(digits, tmp_path_factory):
    dm, x = digits
    model = _zoo("resnet20", dm.spec, x)
    d = tmp_path_factory.mktemp("coreml")
    return {p: export_model(model, "coreml", d / f"{p}.mlpackage", CoreMLExportConfig(precision=p), verify=False).artifact
            for p in ("fp32", "fp16", "int8")}


def test_coreml_fp16_and_int8_weights_are_smaller(resnet20_packages):
    a = resnet20_packages
    r16 = a["fp16"].size_bytes / a["fp32"].size_bytes
    r8 = a["int8"].size_bytes / a["fp32"].size_bytes
    assert 0.45 <= r16 <= 0.56, r16  # measured 0.517: fp16 weights, same graph
    assert r8 <= 0.32, r8  # measured 0.285: int8 weights + per-channel scales
    assert set(a["fp16"].meta["validation"]["weight_dtypes"]) == {"FLOAT16"}
    assert "INT8" in a["int8"].meta["validation"]["weight_dtypes"]
    assert a["fp16"].precision == "fp16" and a["int8"].precision == "int8"


def test_coreml_validation_catches_a_wrong_spec_or_corrupt_package(resnet20_packages, tmp_path):
    import dataclasses
    import shutil

    art = resnet20_packages["fp32"]
    with pytest.raises(ArtifactError, match=r"output shape"):
        validate_package(art.path, dataclasses.replace(art.spec, num_classes=11, class_names=None), "fp32")
    with pytest.raises(ArtifactError, match=r"expected FLOAT16"):
        validate_package(art.path, art.spec, "fp16")
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(art.path, broken)
    spec_file = next(broken.rglob("model.mlmodel"))
    spec_file.write_bytes(spec_file.read_bytes()[:100])  # truncated
    with pytest.raises(ArtifactError, match="cannot read Core ML package"):
        validate_package(broken, art.spec, "fp32")


def test_coreml_torch_export_capture(digits, tmp_path):
    dm, x = digits
    cfg = CoreMLExportConfig(capture="export")
    res = export_model(_zoo("simple_cnn", dm.spec, x), "coreml", tmp_path / "m.mlpackage", cfg, verify=False)
    assert res.artifact.meta["validation"]["output_shape"] == [None, 10]


@off_macos
def test_coreml_runner_says_macos_is_needed(resnet20_packages):
    from edgeopt.runtime import get_runner

    with pytest.raises(MissingDependencyError, match=r"Core ML prediction needs macOS \(this is linux\)"):
        get_runner(resnet20_packages["fp32"])


def test_coreml_config_errors():
    with pytest.raises(ConfigError, match="precision"):
        CoreMLExportConfig(precision="int4")
    with pytest.raises(ConfigError, match="capture"):
        CoreMLExportConfig(capture="script")
