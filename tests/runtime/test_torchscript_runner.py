"""The torchscript runner: agrees with eager, honours threads, refuses bad files and shapes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edgeopt.artifact import sidecar_path
from edgeopt.errors import ArtifactError
from edgeopt.runtime import get_runner, list_runtimes


@pytest.fixture(scope="module")
def tiny_ts(tiny_model, digits_batch, tmp_path_factory):
    from edgeopt.export import export_model

    out = tmp_path_factory.mktemp("ts") / "tiny.torchscript"
    return export_model(tiny_model, "torchscript", out, samples=digits_batch).artifact


def _copy(art, dst_dir):
    dst = dst_dir / art.path.name
    shutil.copy(art.path, dst)
    shutil.copy(art.sidecar_path, sidecar_path(dst))
    return dst


def test_registered_with_version():
    from edgeopt.runtime import RUNNERS, TorchScriptRunner

    assert "torchscript" in list_runtimes() and RUNNERS.get("torchscript") is TorchScriptRunner
    assert TorchScriptRunner.version() == torch.__version__


def test_agrees_with_eager_and_threads_restored(tiny_model, tiny_ts, digits_batch):
    r = get_runner(tiny_ts, threads=2)
    assert (r.name, r.threads, r.input_shape, r.output_shape) == ("torchscript", 2, (1, 8, 8), (10,))
    before = torch.get_num_threads()
    out = r.predict(digits_batch.numpy())
    assert torch.get_num_threads() == before  # the caller's setting is restored
    ref = get_runner(tiny_model).predict(digits_batch.numpy())
    assert out.dtype == np.float32 and out.shape == (64, 10)
    assert np.abs(out - ref).max() <= 1e-5
    r.set_threads(1)
    ones = np.concatenate([r.predict(digits_batch[i : i + 1].numpy()) for i in range(8)])
    assert np.abs(ones - out[:8]).max() <= 1e-5


@pytest.mark.parametrize("cut", ["truncated", "garbage", "empty"])
def test_corrupt_file_is_artifact_error(cut, tiny_ts, tmp_path):
    dst = _copy(tiny_ts, tmp_path)
    data = dst.read_bytes()
    dst.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a zip" * 50, "empty": b""}[cut])
    with pytest.raises(ArtifactError) as e:
        get_runner(dst)
    msg = e.value.one_line()
    assert str(dst) in msg and "re-export" in msg and "\n" not in msg and len(msg) < 600


def test_wrong_input_shape_and_dtype(tiny_ts):
    r = get_runner(tiny_ts)
    with pytest.raises(ArtifactError) as e:
        r.predict(np.zeros((2, 3, 8, 8), np.float32))
    msg = e.value.one_line()
    assert "[N, 1, 8, 8]" in msg and "[2, 3, 8, 8]" in msg and "\n" not in msg
    with pytest.raises(ArtifactError, match="uint8"):
        r.predict(np.zeros((2, 1, 8, 8), np.uint8))


def test_sidecar_for_another_file(tiny_ts, tmp_path):
    dst = _copy(tiny_ts, tmp_path)
    side = json.loads(sidecar_path(dst).read_text())
    side["spec"]["input_shape"] = [3, 16, 16]
    side["spec"]["mean"] = side["spec"]["std"] = [0.5, 0.5, 0.5]
    sidecar_path(dst).write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match=r"exported for input \[1, 8, 8\].*\(3, 16, 16\)"):
        get_runner(dst)
