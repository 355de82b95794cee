"""Size: bytes, gzip'd bytes, parameters and non-zeros are exact counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.errors import ArtifactError
from edgeopt.evaluate import gzip_size, measure_size


def test_gzip_of_zeros_is_tiny(tmp_path):
    p = tmp_path / "zeros.bin"
    p.write_bytes(bytes(1_000_000))
    r = measure_size(p)
    assert r.bytes == 1_000_000
    assert r.gzip_bytes < 2_000  # DEFLATE caps at ~1032:1
    assert r.params is None and r.format == "other"
    import gzip

    assert gzip_size(p) == len(gzip.compress(p.read_bytes(), 9, mtime=0))


def test_random_bytes_do_not_compress(tmp_path):
    p = tmp_path / "noise.bin"
    p.write_bytes(np.random.default_rng(0).bytes(100_000))
    assert measure_size(p).gzip_bytes >= 100_000


def _half_zeroed_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[0].bias.fill_(0.25)
        net[1].bias.fill_(0.2)  # BatchNorm bias starts at zero
        net[3].weight.fill_(1.0)
        net[3].bias.fill_(0.1)
        net[3].weight[:5].zero_()  # half of the linear layer's weights: 5 * 784 = 3920
    return net


def test_nonzero_params_after_zeroing_half_a_layer():
    net = _half_zeroed_net()
    # conv 4*3*3*3 + 4, BN weight+bias 8 (running stats are buffers, not parameters), fc 784*10 + 10
    params = 108 + 4 + 8 + 7840 + 10
    r = measure_size(net)
    assert r.params == params
    assert r.nonzero_params == params - 3920
    assert r.sparsity == pytest.approx(3920 / params)
    assert r.bytes > 4 * params  # fp32 weights plus header and BN buffers
    assert r.gzip_bytes < r.bytes


def test_torch_prune_masks_are_applied():
    from torch.nn.utils import prune

    lin = nn.Linear(10, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1, 101, dtype=torch.float32).reshape(10, 10))
        lin.bias.fill_(1.0)
    prune.l1_unstructured(lin, "weight", amount=0.3)  # zeroes the 30 smallest
    r = measure_size(lin)
    assert r.params == 110 and r.nonzero_params == 80


def test_safetensors_file_counts_every_tensor(tmp_path):
    from safetensors.torch import save_file

    net = _half_zeroed_net()
    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(p))
    r = measure_size(p)
    assert r.format == "safetensors" and r.bytes == p.stat().st_size
    # + BN running_mean (4, zeros), running_var (4, ones), num_batches_tracked (1, zero)
    assert r.params == 7970 + 9
    assert r.nonzero_params == 7970 - 3920 + 4


def test_onnx_initializers_counted_shape_constants_not(tmp_path, gemm_onnx):
    w = np.ones((3, 16), np.float32)
    w[0] = 0.0  # 16 zeros
    b = np.array([0.0, 1.0, 2.0], np.float32)  # 1 zero
    p = gemm_onnx(tmp_path / "m.onnx", w, b)
    r = measure_size(p)
    assert r.format == "onnx" and r.params == 48 + 3 and r.nonzero_params == 48 - 16 + 2
    assert r.bytes == (tmp_path / "m.onnx").stat().st_size


def test_folder_is_summed_and_sidecar_ignored(tmp_path, gemm_onnx):
    d = tmp_path / "model"
    d.mkdir()
    gemm_onnx(d / "a.onnx", np.ones((2, 16)), np.ones(2))
    (d / "weights.bin").write_bytes(bytes(1000))
    (d / "a.onnx.edgeopt.json").write_text("{}")
    r = measure_size(d)
    assert r.format == "folder" and len(r.files) == 2
    assert r.bytes == (d / "a.onnx").stat().st_size + 1000
    assert r.params == 34 and r.nonzero_params == 34


def test_missing_path_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        measure_size(tmp_path / "nope.onnx")
