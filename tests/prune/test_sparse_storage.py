"""Sparse checkpoints (bitmask + packed values), int8 values, sparse ONNX, the size report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.errors import ModelLoadError
from edgeopt.models import save_checkpoint
from edgeopt.prune import PruneConfig, prune
from edgeopt.prune.sparse_storage import (
    load_sparse,
    load_sparse_checkpoint,
    save_sparse,
    size_report,
    sparse_header,
    to_sparse_onnx,
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor, so -0.0 and 0.0 differ."""
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


@pytest.fixture(scope="module")
def pruned70(digits_cnn):
    return prune(digits_cnn, PruneConfig(method="unstructured", ratio=0.7)).model


@pytest.fixture(scope="module")
def files(pruned70, tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse")
    return {"dense": save_checkpoint(d / "cnn", pruned70),
            "fp32": save_sparse(d / "cnn.sparse", pruned70),
            "int8": save_sparse(d / "cnn.sparse-int8", pruned70, values="int8"), "dir": d}


def test_fp32_round_trip_is_bit_exact_including_negative_zeros(pruned70, files, tmp_path):
    state = pruned70.state_dict()
    back = load_sparse(files["fp32"])
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(_bits(back[k]), _bits(v)), k
    fmt = {k: e["format"] for k, e in sparse_header(files["fp32"])["tensors"].items()}
    assert fmt["features.3.0.weight"] == "bitmask" and fmt["features.0.0.weight"] == "dense"  # 70 % vs 0 %
    assert fmt["features.0.1.running_mean"] == "dense"
    # explicit -0.0, NaN, ints, bools and half precision
    odd = {"z": torch.tensor([0.0, -0.0, 0.0, float("nan")] * 64), "i": torch.zeros(300, dtype=torch.int64),
           "b": torch.zeros(300, dtype=torch.bool), "h": torch.zeros(300, dtype=torch.float16)}
    odd["i"][7], odd["b"][9], odd["h"][3] = 5, True, -0.0
    back = load_sparse(save_sparse(tmp_path / "odd", odd))
    for k, v in odd.items():
        assert torch.equal(_bits(back[k]), _bits(v)), k
    assert {e["format"] for e in sparse_header(tmp_path / "odd")["tensors"].values()} == {"bitmask"}


def test_sparse_fp32_is_under_0_4_of_dense_at_70_percent_and_int8_smaller_still(files):
    rep = size_report([files["dense"], files["fp32"], files["int8"]])
    dense, fp32, int8 = rep["cnn.safetensors"], rep["cnn.sparse.safetensors"], rep["cnn.sparse-int8.safetensors"]
    assert (dense["kind"], fp32["kind"], int8["kind"]) == ("dense", "sparse fp32", "sparse int8")
    # measured on simple_cnn (242,606 weights, 69.5 % zeros): 0.367x and 0.120x of 973 KB
    assert fp32["ratio"] <= 0.40 and int8["ratio"] <= 0.15
    assert fp32["gzip_bytes"] < dense["gzip_bytes"] and int8["gzip_ratio"] <= 0.35
    assert fp32["params"] == dense["params"] == 242_606
    assert fp32["nonzero_params"] == dense["nonzero_params"]


def test_int8_error_is_at_most_half_a_step_of_the_folded_weights(pruned70, files):
    """int8 stores the conv weights with their batch norm folded in (as int8 runtimes do):
    each is within half a step of the folded fp32 weight; the batch norm's constants cost
    no bytes, the float vectors are fp16, integer buffers exact."""
    from edgeopt.prune.sparse_fold import conv_bn_pairs, fold_state

    pairs = conv_bn_pairs(pruned70)
    assert pairs == [("features.0.0", "features.0.1"), ("features.1.0", "features.1.1"),
                     ("features.3.0", "features.3.1"), ("features.5.0", "features.5.1")]
    state, consts = fold_state(pruned70, pruned70.state_dict(), pairs)
    back = load_sparse(files["int8"])
    tensors = sparse_header(files["int8"])["tensors"]
    for k, v in state.items():
        fmt = tensors[k]["format"]
        if fmt in ("dense_int8", "bitmask_int8"):
            step = v.detach().reshape(v.shape[0], -1).abs().amax(1) / 127
            err = (back[k] - v).reshape(v.shape[0], -1).abs()
            # the stored fp16 scale is at most 2^-10 above max|w| / 127 (rounded up)
            assert bool((err <= step[:, None] / 2 * (1 + 2**-10) + 1e-12).all()), k
            assert bool((back[k][v == 0] == 0).all())  # pruned weights stay exactly zero
        elif fmt == "const":
            assert bool((back[k] == consts[k]).all()), k
        elif fmt == "dense_fp16":
            assert torch.allclose(back[k], v, rtol=1e-3, atol=1e-6), k
        else:
            assert not v.is_floating_point() and torch.equal(back[k], v), k
    assert tensors["features.5.0.weight"]["format"] == "bitmask_int8"
    assert tensors["fc.weight"]["format"] == "dense_int8"
    assert tensors["features.5.1.running_var"]["format"] == "const"


def test_load_sparse_checkpoint_rebuilds_the_model_with_its_sidecar(pruned70, files, digits_data):
    model, side = load_sparse_checkpoint(files["fp32"])
    assert side["arch"]["name"] == "simple_cnn" and side["extra"]["sparse"]["values"] == "fp32"
    assert (files["dir"] / "cnn.sparse.json").is_file()
    x, _ = digits_data.samples(64)
    with torch.no_grad():
        assert torch.equal(model(x), pruned70(x))
    q, _ = load_sparse_checkpoint(files["int8"])
    with torch.no_grad():
        agree = float((q(x).argmax(1) == pruned70(x).argmax(1)).double().mean())
        rel = float((q(x) - pruned70(x)).abs().max() / pruned70(x).abs().max())
    assert agree >= 0.95 and rel < 0.05, (agree, rel)


def test_damaged_and_foreign_files_are_one_line_errors(files, tmp_path):
    with pytest.raises(ModelLoadError, match="not a sparse checkpoint"):
        load_sparse(files["dense"])
    bad = tmp_path / "bad.sparse.safetensors"
    bad.write_bytes(files["fp32"].read_bytes()[:-100])
    with pytest.raises(ModelLoadError) as err:
        load_sparse(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="not found"):
        load_sparse_checkpoint(tmp_path / "missing")


def test_sparse_onnx_loads_in_onnxruntime_with_the_dense_outputs(pruned70, digits_data, files):
    import onnx
    import onnxruntime as ort

    from edgeopt.export import export_model

    x, _ = digits_data.samples(32)
    dense = export_model(pruned70, "onnx", files["dir"] / "cnn.onnx", samples=x).artifact.path
    sparse = to_sparse_onnx(dense, files["dir"] / "cnn.sparse.onnx")
    model = onnx.load(str(sparse))
    assert len(model.graph.sparse_initializer) == 3  # the three 70 % convs (> 2/3: smaller)
    outs = []
    for f in (dense, sparse):
        sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert np.array_equal(outs[0], outs[1])
    rep = size_report([dense, sparse])
    s = rep["cnn.sparse.onnx"]
    # int64 indices: 12 bytes per kept fp32 weight; measured 0.90x at 70 %
    assert s["kind"] == "sparse onnx" and s["ratio"] < 0.95
    assert s["params"] == rep["cnn.onnx"]["params"] and s["nonzero_params"] == rep["cnn.onnx"]["nonzero_params"]


def test_load_checkpoint_reads_a_sparse_checkpoint_as_the_same_model(tmp_path):
    """Every command loads checkpoints with load_checkpoint: a sparse one gives the same logits."""
    from edgeopt.data import get_dataset
    from edgeopt.models import create_model, load_checkpoint
    from edgeopt.prune import PruneConfig, prune
    from edgeopt.prune.sparse_storage import save_sparse

    data = get_dataset("digits")
    pruned = prune(create_model("simple_cnn", data.spec), PruneConfig(ratio=0.7)).model
    path = save_sparse(tmp_path / "m.sparse.safetensors", pruned)
    loaded, _ = load_checkpoint(path)
    x = data.calibration(16)
    assert torch.equal(loaded(x), pruned(x))


def test_a_structured_model_saved_sparse_reloads_through_its_pruning_record(tmp_path):
    """Sparse files go through load_checkpoint's one loading path, so the structure record of
    a channel-pruned model is re-applied before the sparse weights load."""
    from edgeopt.data import get_dataset
    from edgeopt.models import create_model, load_checkpoint
    from edgeopt.prune import PruneConfig, prune
    from edgeopt.prune.sparse_storage import save_sparse

    data = get_dataset("digits")
    pruned = prune(create_model("simple_cnn", data.spec), PruneConfig(method="structured", ratio=0.5)).model
    loaded, side = load_checkpoint(save_sparse(tmp_path / "s.sparse.safetensors", pruned))
    x = data.calibration(16)
    assert side["pruning"]["modules"] and torch.equal(loaded(x), pruned(x))
