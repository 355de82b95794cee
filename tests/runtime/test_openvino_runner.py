"""The openvino runner: explicit f32 / threads / latency hint, batch sizes, broken files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino")

from edgeopt.artifact import Artifact, sidecar_path
from edgeopt.errors import ArtifactError
from edgeopt.runtime import get_runner


@pytest.fixture(scope="module")
def tiny_ir(tiny_model, digits_batch, tmp_path_factory):
    from edgeopt.export import export_model

    out = tmp_path_factory.mktemp("ov") / "tiny.xml"
    return export_model(tiny_model, "openvino", out, {"onnx_dynamo": False}, samples=digits_batch).artifact


def _copy(art: Artifact, dst_dir) -> Artifact:
    """A copy of the IR pair and its sidecar in ``dst_dir`` (to break without harm)."""
    for f in [*art.files(), art.sidecar_path]:
        shutil.copy(f, dst_dir / f.name)
    return Artifact.load(dst_dir / art.path.name)


def test_compiled_with_explicit_precision_threads_and_latency_hint(tiny_ir, tiny_model, digits_batch):
    import torch

    r = get_runner(tiny_ir, threads=2)
    out = r.predict(digits_batch.numpy())
    with torch.no_grad():
        ref = tiny_model(digits_batch).numpy()
    assert np.abs(out - ref).max() <= 1e-5
    compiled, _ = r._get(digits_batch.shape[0])
    assert r.inference_precision == "f32"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")


def test_every_batch_size_gives_the_rows_of_the_full_batch(tiny_ir, digits_batch):
    x = digits_batch.numpy()
    static, dynamic = get_runner(tiny_ir), get_runner(tiny_ir, dynamic_batch=True)
    full = static.predict(x)
    for b in (1, 7, 64):
        assert np.abs(static.predict(x[:b]) - full[:b]).max() <= 1e-6
        assert np.abs(dynamic.predict(x[:b]) - full[:b]).max() <= 1e-6
    assert len(dynamic._compiled) == 1  # one compile for every size
    assert static.predict(x[:3]).shape == (3, 10)


def test_wrong_input_is_an_artifact_error(tiny_ir):
    r = get_runner(tiny_ir)
    with pytest.raises(ArtifactError, match=r"expects input of shape \[N, 1, 8, 8\]"):
        r.predict(np.zeros((2, 1, 16, 16), np.float32))
    with pytest.raises(ArtifactError, match="normalised float32"):
        r.predict(np.zeros((2, 1, 8, 8), np.uint8))


def test_truncated_bin(tiny_ir, tmp_path):
    art = _copy(tiny_ir, tmp_path)
    binf = art.path.with_suffix(".bin")
    binf.write_bytes(binf.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated"):
        get_runner(art.path)
    # without the recorded size and hash, OpenVINO's own check still gives one line
    side = json.loads(art.sidecar_path.read_text())
    for k in ("weights_bytes", "weights_sha256"):
        side["meta"].pop(k)
    art.sidecar_path.write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match=r"OpenVINO cannot read tiny.xml .*Incorrect weights in bin file") as info:
        get_runner(art.path)
    assert "\n" not in str(info.value)


def test_corrupt_bin_of_the_right_size(tiny_ir, tmp_path):
    art = _copy(tiny_ir, tmp_path)
    binf = art.path.with_suffix(".bin")
    binf.write_bytes(bytes(reversed(binf.read_bytes())))
    with pytest.raises(ArtifactError, match="SHA-256"):
        get_runner(art.path)


@pytest.mark.parametrize("damage", ["truncate", "junk"])
def test_corrupt_xml(tiny_ir, tmp_path, damage):
    art = _copy(tiny_ir, tmp_path)
    text = art.path.read_bytes()
    art.path.write_bytes(text[: len(text) // 2] if damage == "truncate" else b"\x00garbage" * 8)
    with pytest.raises(ArtifactError, match="OpenVINO cannot read tiny.xml") as info:
        get_runner(art.path)
    assert "\n" not in str(info.value)


def test_missing_bin_and_missing_sidecar(tiny_ir, tmp_path):
    art = _copy(tiny_ir, tmp_path)
    art.path.with_suffix(".bin").unlink()
    with pytest.raises(ArtifactError, match="no weights file tiny.bin"):
        get_runner(art.path)
    sidecar_path(art.path).unlink()
    with pytest.raises(ArtifactError, match="has no sidecar"):
        Artifact.load(art.path)


def test_runs_onnx_files_too(tiny_onnx, digits_batch):
    x = digits_batch.numpy()
    ov, ort = get_runner(tiny_onnx, "openvino"), get_runner(tiny_onnx)
    assert np.abs(ov.predict(x) - ort.predict(x)).max() <= 1e-5
