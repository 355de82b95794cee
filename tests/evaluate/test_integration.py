"""evaluate with the real edgeopt.data / models / artifact / runtime modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.evaluate import (
    add_variant,
    count_macs,
    evaluate_accuracy,
    evaluate_variant,
    measure_latency,
    measure_peak_memory,
    new_results,
    validate_results,
)

QUICK = {"latency_runs": 10, "latency_warmup": 1, "throughput_batch": 8, "throughput_runs": 2, "progress": False}


@pytest.fixture(scope="module")
def digits():
    from edgeopt.data import get_dataset

    return get_dataset("digits")


@pytest.fixture(scope="module")
def cnn(digits):
    from edgeopt.models import create_model

    torch.manual_seed(0)
    return create_model("simple_cnn", digits.spec).eval()


@pytest.fixture
def linear_onnx(tmp_path, digits, gemm_onnx):
    """A Flatten+Gemm ONNX classifier for digits (1x8x8 -> 10) with a sidecar."""
    from edgeopt.artifact import Artifact

    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 64)).astype(np.float32)
    w[:, :32] = 0.0  # half the weights zero: 320 zeros
    b = rng.standard_normal(10).astype(np.float32)
    path = gemm_onnx(tmp_path / "linear.onnx", w, b, input_shape=(1, 8, 8))
    art = Artifact(path, "onnx", digits.spec, meta={"lineage": [{"step": "export", "format": "onnx"}]})
    art.save_sidecar()
    return art, w, b


def test_onnx_artifact_variant(linear_onnx, digits):
    art, w, b = linear_onnx
    row = evaluate_variant("linear onnx", art, digits, **QUICK)
    assert row["format"] == "onnx" and row["runtime"] == "onnxruntime" and row["precision"] == "fp32"
    assert row["artifact"] == str(art.path) and row["lineage"] == [{"step": "export", "format": "onnx"}]
    # accuracy through onnxruntime == the same linear model in numpy
    x, y = digits.samples(len(digits.test), split="test")
    logits = x.reshape(len(x), -1).numpy() @ w.T + b
    assert row["accuracy"]["top1"] == pytest.approx(float((logits.argmax(1) == y.numpy()).mean()))
    assert row["size"]["params"] == 650 and row["size"]["nonzero_params"] == 330
    assert row["memory"]["peak_rss_mb"] >= row["memory"]["baseline_mb"] > 0
    assert row["memory"]["torch_loaded"] is False  # the probe does not drag torch into an ORT reading
    assert row["macs"] is None and row["energy"] is None  # no model given: not guessed
    assert any(n.startswith("macs not measured") for n in row["notes"])
    validate_results(add_variant(new_results("t", {}), row))


def test_module_variant_with_memory_through_a_checkpoint(cnn, digits):
    row = evaluate_variant("fp32 eager", cnn, digits, **QUICK)
    assert row["format"] == "pytorch" and row["runtime"] == "torch" and row["artifact"] is None
    assert row["accuracy"]["n"] == len(digits.test)
    assert row["macs"]["total_macs"] == count_macs(cnn, digits.spec).total_macs > 0
    assert row["size"]["params"] == sum(p.numel() for p in cnn.parameters())
    mem = row["memory"]
    assert mem is not None and mem["runtime"] == "torch" and mem["torch_loaded"] is True
    assert mem["peak_rss_mb"] >= mem["after_load_mb"] >= mem["baseline_mb"] > 0
    assert row["energy"]["total_uJ"] > 0 and row["energy"]["precision"] == "fp32"


def test_checkpoint_path_variant(cnn, digits, tmp_path):
    from edgeopt.models import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "model_fp32", cnn, lineage=[{"step": "train"}])
    row = evaluate_variant("fp32 torch", ckpt, digits, model=cnn, runtime="torch", memory=False, **QUICK)
    assert row["format"] == "checkpoint" and row["runtime"] == "torch"
    assert row["artifact"] == str(ckpt) and row["lineage"] == [{"step": "train"}]
    assert row["size"]["bytes"] == ckpt.stat().st_size
    from edgeopt.runtime import get_runner

    direct = evaluate_accuracy(get_runner(cnn, threads=1), digits)
    assert row["accuracy"]["top1"] == direct.top1


def test_onnxruntime_threads_switched_and_restored(linear_onnx):
    from edgeopt.runtime import get_runner

    art, _, _ = linear_onnx
    runner = get_runner(art, threads=1)
    r = measure_latency(runner, art.spec, runs=3, warmup=1, threads=2)
    assert r.threads == 2 and r.runtime == "onnxruntime" and runner.threads == 1


def test_child_does_not_inherit_the_parents_peak(linear_onnx):
    held = np.ones(384 * 2**20, dtype=np.uint8)  # the parent holds 384 MiB more (pages written)
    with open("/proc/self/status") as fh:
        parent_hwm = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM"))
    r = measure_peak_memory(linear_onnx[0], "onnxruntime")
    assert r.peak_rss_mb < parent_hwm - 300
    del held
