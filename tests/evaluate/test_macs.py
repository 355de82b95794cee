"""MACs: the flop counter and the per-layer hook formulas agree with a hand count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.evaluate import count_macs

# TinyNet on 3x16x16 (see conftest):
CONV1 = 8 * 3 * 3 * 3 * 16 * 16  # Cout * Cin * kh * kw * Hout * Wout = 55,296
CONV2 = 16 * (8 // 2) * 3 * 3 * 8 * 8  # groups=2, stride 2 -> 8x8 output = 36,864
FC = 16 * 10  # 160


def test_tiny_net_macs_equal_hand_count(tiny_net, spec16):
    r = count_macs(tiny_net, spec16)
    assert r.total_macs == CONV1 + CONV2 + FC == 92_320
    assert r.total_flops == 2 * r.hook_macs  # flop counter == 2 x hook formulas
    assert r.hook_macs == r.total_macs and r.unattributed_macs == 0
    layers = {l["name"]: l for l in r.per_layer}
    assert layers["conv1"]["macs"] == CONV1 and layers["conv1"]["params"] == 8 * 27 + 8
    assert layers["conv2"]["macs"] == CONV2 and layers["conv2"]["type"] == "Conv2d"
    assert layers["fc"]["macs"] == FC and layers["pool"]["macs"] == 0
    assert all(l["source"] == "formula" for n, l in layers.items() if n != "pool")


def test_macs_scale_with_batch(tiny_net, spec16):
    assert count_macs(tiny_net, spec16, batch_size=4).total_macs == 4 * 92_320


def test_spec_from_the_model_and_mode_restored(tiny_net):
    tiny_net.train()
    r = count_macs(tiny_net)  # spec attached by attach_spec
    assert r.total_macs == 92_320 and tiny_net.training


def test_bytes_moved(tiny_net, spec16):
    r = count_macs(tiny_net, spec16)
    n_weights = sum(p.numel() for p in tiny_net.parameters())
    assert r.weight_elements == n_weights and r.weight_bytes == 4 * n_weights
    # activations read + written per leaf layer (fp32):
    acts = (3 * 256 + 8 * 256) + (8 * 256 + 16 * 64) + (16 * 64 + 16) + (16 + 10)
    assert r.activation_elements == acts and r.activation_bytes == 4 * acts
    assert r.bytes_moved(1) == {"weights": n_weights, "activations": acts}


def test_functional_matmul_is_counted_but_unattributed():
    class WithMatmul(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 6)
            self.proj = nn.Parameter(torch.ones(6, 4))

        def forward(self, x):
            return self.fc(x.flatten(1)) @ self.proj  # 6*4 MACs outside any leaf module

    from edgeopt.spec import ModelSpec

    r = count_macs(WithMatmul(), ModelSpec((3, 2, 2), 4, (0.0,) * 3, (1.0,) * 3))
    assert r.total_macs == 12 * 6 + 6 * 4 and r.hook_macs == 72 and r.unattributed_macs == 24


def test_depthwise_and_transposed_conv_agree_with_flop_counter():
    from edgeopt.spec import ModelSpec

    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ConvTranspose2d(4, 2, 2, stride=2))
    r = count_macs(net, ModelSpec((4, 5, 5), 2, (0.0,) * 4, (1.0,) * 4))
    assert r.hook_macs == 4 * 1 * 9 * 25 + 4 * 2 * 4 * 25
    assert r.total_flops == 2 * r.hook_macs


def test_forward_failure_is_one_line(spec16):
    from edgeopt.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="3, 16, 16"):
        count_macs(nn.Linear(5, 2), spec16)
