"""Magnitude pruning: exact counts (local and global), protected layers, deterministic ties."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.models import create_model
from edgeopt.prune import PruneConfig, prune
from edgeopt.prune.unstructured import magnitude_masks, smallest_k


def _zeros(model: nn.Module, name: str) -> int:
    return int((model.get_submodule(name).weight == 0).sum())


def test_local_removes_exactly_round_ratio_times_numel_per_layer_and_protects_first_last(digits_data):
    torch.manual_seed(0)
    model = create_model("simple_cnn", digits_data.spec).eval()
    table = {"features.3.0": 0.9}
    res = prune(model, PruneConfig(ratio=0.7, layer_ratios=table))
    rows = {r["name"]: r for r in res.layers}
    assert res.protected == {"features.0.0": "first layer", "fc": "last layer"}
    for name in ("features.1.0", "features.3.0", "features.5.0"):
        n = model.get_submodule(name).weight.numel()
        want = round(table.get(name, 0.7) * n)
        assert _zeros(res.model, name) == want  # e.g. 12902 of 18432, 66355 of 73728
        assert int((~res.model.edgeopt_masks[name]).sum()) == want
        assert rows[name]["sparsity"] == pytest.approx(want / n, abs=1e-12)
    # the protected layers are untouched, bit for bit
    for name in ("features.0.0", "fc"):
        assert torch.equal(res.model.get_submodule(name).weight, model.get_submodule(name).weight)
    # the removed weights are the smallest of their layer
    for name, keep in res.model.edgeopt_masks.items():
        w = model.get_submodule(name).weight.detach().abs()
        assert float(w[~keep].max()) <= float(w[keep].min())


def test_global_removes_the_weighted_total_with_one_threshold(tiny_spec):
    torch.manual_seed(0)
    model = create_model("resnet20", tiny_spec).eval()
    ratios = {"layer1.0.conv1": 0.5, "layer2.0.conv1": 0.8, "layer3.0.conv2": 0.3}
    with torch.no_grad():  # scale layers apart, so one threshold takes unequal shares
        model.layer3[0].conv2.weight.mul_(10.0)
    masks = magnitude_masks(model, ratios, "global")
    numel = {n: model.get_submodule(n).weight.numel() for n in ratios}
    total = round(sum(ratios[n] * numel[n] for n in ratios))  # 0.5*2304 + 0.8*4608 + 0.3*36864
    assert total == 15898
    assert sum(int((~m).sum()) for m in masks.values()) == total
    removed = torch.cat([model.get_submodule(n).weight.detach().abs()[~m] for n, m in masks.items()])
    kept = torch.cat([model.get_submodule(n).weight.detach().abs()[m] for n, m in masks.items()])
    assert float(removed.max()) <= float(kept.min())
    share = {n: 1 - float(m.float().mean()) for n, m in masks.items()}
    # the scaled layer loses less than its ratio, the others more (measured 0.252, 0.904, 0.984)
    assert share["layer3.0.conv2"] < 0.26 and share["layer1.0.conv1"] > 0.9 and share["layer2.0.conv1"] > 0.98

    # through prune(): the same total over all chosen layers, first/last protected
    res = prune(model, PruneConfig(ratio=0.6, scope="global"))
    chosen = [r for r in res.layers if r["protected"] is None]
    n_all = sum(r["weight_before"] for r in chosen)
    assert sum(r["weight_before"] - r["nonzero_after"] for r in chosen) == round(0.6 * n_all)
    assert len({round(r["sparsity"], 3) for r in chosen}) > 3  # layers lose different amounts
    assert res.info["scope"] == "global" and res.info["threshold"] > 0


def test_ties_are_broken_by_position_and_counts_stay_exact():
    lin = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    keep = magnitude_masks(nn.Sequential(lin), {"0": 0.35})["0"]  # round(3.5) = 4, all tied
    assert keep.tolist() == [[False, False, False, False, True], [True, True, True, True, True]]
    a, b = smallest_k([torch.ones(3), torch.ones(3)], 4)
    assert a.tolist() == [True, True, True] and b.tolist() == [True, False, False]


def test_rising_ratios_give_nested_masks_as_the_gradual_schedule_needs(tiny_spec):
    torch.manual_seed(0)
    model = create_model("simple_cnn", tiny_spec).eval()
    layers = ["features.1.0", "features.3.0"]
    previous = None
    for r in (0.2, 0.5, 0.8):
        masks = magnitude_masks(model, dict.fromkeys(layers, r))
        with torch.no_grad():
            for n, m in masks.items():
                model.get_submodule(n).weight.mul_(m)
        if previous is not None:
            for n in layers:
                assert not bool((masks[n] & ~previous[n]).any())  # nothing pruned regrows
        previous = masks
    assert [_zeros(model, n) for n in layers] == [round(0.8 * 18432), round(0.8 * 73728)]


def test_bad_scope_and_ratio_are_one_line_config_errors():
    from edgeopt.errors import ConfigError

    m = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="scope"):
        magnitude_masks(m, {"0": 0.5}, "everywhere")
    with pytest.raises(ConfigError, match=r"not in \[0, 1\]"):
        magnitude_masks(m, {"0": 1.5})
