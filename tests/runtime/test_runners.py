"""Runners: torch and onnxruntime agree, threads are honoured, bad inputs are clear errors."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from edgeopt.artifact import Artifact, ArtifactWarning, sidecar_path
from edgeopt.errors import ArtifactError, ConfigError, MissingDependencyError
from edgeopt.runtime import Runner, get_runner, list_runtimes, runtime_versions


def _copy(art: Artifact, dst_dir, sidecar: bool = True):
    dst = dst_dir / art.path.name  # same name: the sidecar's "file" field still matches
    shutil.copy(art.path, dst)
    if sidecar:
        shutil.copy(art.sidecar_path, sidecar_path(dst))
    return dst


def test_registry_and_versions():
    assert {"onnxruntime", "torch", "torchscript", "openvino"} <= set(list_runtimes())
    vers = runtime_versions()
    assert vers["torch"] == torch.__version__
    import onnxruntime

    assert vers["onnxruntime"] == onnxruntime.__version__


def test_torch_and_onnxruntime_agree(tiny_model, tiny_onnx, digits_batch):
    x = digits_batch.numpy()
    t = get_runner(tiny_model, threads=1)
    o = get_runner(tiny_onnx, threads=1)
    assert isinstance(t, Runner) and isinstance(o, Runner)
    assert (t.name, o.name) == ("torch", "onnxruntime")
    assert t.input_shape == o.input_shape == (1, 8, 8)
    assert t.output_shape == o.output_shape == (10,)
    a, b = t.predict(x), o.predict(x)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (64, 10)
    assert np.abs(a - b).max() <= 1e-5
    assert (a.argmax(1) == b.argmax(1)).all()
    # a path works as well as an Artifact, and torch tensors are accepted as input
    c = get_runner(str(tiny_onnx.path)).predict(digits_batch)
    assert np.array_equal(b, c)


def test_torch_threads_honoured_and_restored(tiny_model, digits_batch):
    before = torch.get_num_threads()
    tiny_model.seen_threads.clear()
    r = get_runner(tiny_model, threads=2)
    r.predict(digits_batch[:4].numpy())
    assert tiny_model.seen_threads == [2]
    assert torch.get_num_threads() == before  # the caller's setting is restored
    r.set_threads(1)
    r.predict(digits_batch[:4].numpy())
    assert tiny_model.seen_threads == [2, 1]


def test_torch_runner_keeps_training_flag(tiny_model, digits_batch):
    tiny_model.train()
    try:
        out1 = get_runner(tiny_model).predict(digits_batch[:8].numpy())
        assert tiny_model.training  # restored after predict
        tiny_model.eval()
        out2 = get_runner(tiny_model).predict(digits_batch[:8].numpy())
        assert np.array_equal(out1, out2)  # predict ran in eval mode both times (BN stats)
    finally:
        tiny_model.eval()


def test_onnxruntime_session_threads(tiny_onnx, digits_batch):
    import onnxruntime as ort

    r = get_runner(tiny_onnx, threads=2)
    opts = r.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert r.session.get_providers() == ["CPUExecutionProvider"]
    ref = r.predict(digits_batch.numpy())
    r.set_threads(1)  # rebuilds the session
    assert r.threads == 1 and r.session.get_session_options().intra_op_num_threads == 1
    assert np.abs(r.predict(digits_batch.numpy()) - ref).max() <= 1e-6


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_batch_size_independence(runtime, tiny_model, tiny_onnx, digits_batch):
    r = get_runner(tiny_model if runtime == "torch" else tiny_onnx, threads=1)
    x = digits_batch.numpy()
    whole = r.predict(x)
    ones = np.concatenate([r.predict(x[i : i + 1]) for i in range(len(x))])
    sevens = np.concatenate([r.predict(x[i : i + 7]) for i in range(0, len(x), 7)])
    assert np.abs(whole - ones).max() <= 1e-5
    assert np.abs(whole - sevens).max() <= 1e-5


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_wrong_input_shape_and_dtype(runtime, tiny_model, tiny_onnx):
    r = get_runner(tiny_model if runtime == "torch" else tiny_onnx)
    with pytest.raises(ArtifactError) as e:
        r.predict(np.zeros((2, 3, 8, 8), np.float32))
    msg = e.value.one_line()
    assert "[N, 1, 8, 8]" in msg and "[2, 3, 8, 8]" in msg and "\n" not in msg
    with pytest.raises(ArtifactError, match=r"got \[1, 8, 8\]"):
        r.predict(np.zeros((1, 8, 8), np.float32))  # no batch dimension
    with pytest.raises(ArtifactError, match="uint8"):
        r.predict(np.zeros((2, 1, 8, 8), np.uint8))  # raw pixels, not normalised floats


@pytest.mark.parametrize("cut", ["truncated", "garbage", "empty"])
def test_corrupt_onnx_is_artifact_error(cut, tiny_onnx, tmp_path):
    dst = _copy(tiny_onnx, tmp_path)
    data = dst.read_bytes()
    dst.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not onnx" * 50, "empty": b""}[cut])
    with pytest.raises(ArtifactError) as e:
        get_runner(dst)
    msg = e.value.one_line()
    assert str(dst) in msg and "re-export" in msg and len(msg) < 600


def test_sidecar_for_another_file(tiny_onnx, tmp_path):
    dst = _copy(tiny_onnx, tmp_path)
    side = json.loads(sidecar_path(dst).read_text())
    side["spec"]["input_shape"] = [3, 16, 16]
    side["spec"]["mean"] = side["spec"]["std"] = [0.5, 0.5, 0.5]
    sidecar_path(dst).write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match=r"takes input \['batch', 1, 8, 8\].*\(3, 16, 16\)"):
        get_runner(dst)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(ArtifactError, match="artifact not found"):
        Artifact.load(tmp_path / "nope.onnx")
    (tmp_path / "m.tflite2").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="unknown artifact format '.tflite2'"):
        get_runner(tmp_path / "m.tflite2")


def test_missing_sidecar_reads_onnx_metadata(tiny_onnx, tmp_path):
    dst = _copy(tiny_onnx, tmp_path, sidecar=False)
    with pytest.warns(ArtifactWarning, match="no sidecar"):
        art = Artifact.load(dst)
    assert art.spec == tiny_onnx.spec  # mean/std/classes recovered from the ONNX metadata
    assert art.format == "onnx" and art.precision == "fp32"


def test_missing_sidecar_guesses_shape_from_graph(tiny_onnx, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_onnx.path))
    del proto.metadata_props[:]  # a foreign ONNX file: no edgeopt metadata
    dst = tmp_path / "foreign.onnx"
    onnx.save(proto, str(dst))
    with pytest.warns(ArtifactWarning, match=r"guessed input \(1, 8, 8\) and 10 classes"):
        art = Artifact.load(dst)
    assert art.spec.input_shape == (1, 8, 8) and art.spec.num_classes == 10
    assert art.spec.mean == (0.0,) and art.spec.std == (1.0,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ArtifactWarning)
        assert get_runner(dst).predict(np.zeros((3, 1, 8, 8), np.float32)).shape == (3, 10)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "cannot read sidecar"),
        ('{"format": "onnx"}', "not an edgeopt artifact sidecar"),
        ('{"kind": "edgeopt_artifact", "format": "checkpoint", "spec": {}}', "belongs to another file"),
        ('{"kind": "edgeopt_artifact", "format": "onnx", "spec": {"input_shape": [1]}}', "invalid sidecar"),
    ],
)
def test_bad_or_foreign_sidecar(content, match, tiny_onnx, tmp_path):
    dst = _copy(tiny_onnx, tmp_path)
    sidecar_path(dst).write_text(content)
    with pytest.raises(ArtifactError, match=match) as e:
        Artifact.load(dst)
    assert "\n" not in e.value.one_line()


def test_checkpoint_artifact_runs_in_torch(tiny_model, digits_batch, tmp_path):
    from edgeopt.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("simple_cnn", tiny_model.edgeopt_spec).eval()
    path = save_checkpoint(tmp_path / "cnn", model, lineage=[{"step": "train"}])
    art = Artifact.load(path)
    assert (art.format, art.default_runtime, art.meta["lineage"]) == ("checkpoint", "torch", [{"step": "train"}])
    r = get_runner(path, threads=1)
    assert r.name == "torch"
    with torch.inference_mode():
        ref = model(digits_batch).numpy()
    assert np.abs(r.predict(digits_batch.numpy()) - ref).max() == 0.0
    with pytest.raises(ConfigError, match="runtime 'onnxruntime' cannot run a 'checkpoint' artifact"):
        get_runner(art, "onnxruntime")
    (tmp_path / "lone.safetensors").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="neither"):
        Artifact.load(tmp_path / "lone.safetensors")


def test_bad_runtime_requests(tiny_model, tiny_onnx):
    with pytest.raises(ConfigError, match="unknown runtime 'onnxruntim'. Did you mean 'onnxruntime'"):
        get_runner(tiny_onnx, "onnxruntim")
    with pytest.raises(ConfigError, match="unknown runtime 'tensorflow'"):
        get_runner(tiny_model, "tensorflow")
    with pytest.raises(ConfigError, match="export it first"):
        get_runner(tiny_model, "onnxruntime")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            get_runner(tiny_model, threads=bad)
    with pytest.raises(ConfigError, match="nn.Module, an Artifact or a path"):
        get_runner(42)


def test_unavailable_provider_is_an_error_not_a_cpu_fallback(tiny_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        r = get_runner(tiny_onnx, providers=["cuda"])
        assert r.session.get_providers()[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(MissingDependencyError, match="CUDAExecutionProvider"):
            get_runner(tiny_onnx, providers=["cuda"])


def test_artifact_validation_and_sidecar_roundtrip(tiny_onnx, tmp_path):
    dst = _copy(tiny_onnx, tmp_path, sidecar=False)
    art = Artifact(dst, "onnx", tiny_onnx.spec, "int8", {"lineage": [{"step": "quantize"}]})
    side = art.save_sidecar()
    assert side.name == "tiny.onnx.edgeopt.json"
    back = Artifact.load(dst)
    assert (back.precision, back.meta, back.spec) == ("int8", {"lineage": [{"step": "quantize"}]}, tiny_onnx.spec)
    with pytest.raises(ConfigError, match="precision"):
        Artifact(dst, "onnx", tiny_onnx.spec, "int4")
    with pytest.raises(ConfigError, match="format"):
        Artifact(dst, "no-such-format", tiny_onnx.spec)
    with pytest.raises(ArtifactError, match="does not exist"):
        Artifact(tmp_path / "gone.onnx", "onnx", tiny_onnx.spec).save_sidecar()
    with pytest.raises(ArtifactError, match="is a sidecar"):
        Artifact.load(side)


@pytest.mark.parametrize("threads", [0, -1, 1025, 100_000])
def test_thread_counts_outside_1_to_1024_are_refused(threads):
    """--threads 100000 hung the process (one OS thread per count); 0 was accepted."""
    from edgeopt.runtime import check_threads

    with pytest.raises(ConfigError, match=rf"threads={threads} must be"):
        check_threads(threads)
    assert check_threads(1024) == 1024
