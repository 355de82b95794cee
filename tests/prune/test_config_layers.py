"""PruneConfig validation and layer selection by name and pattern."""

from __future__ import annotations

import pytest
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.prune import PruneConfig, prunable_layers, select_layers
from edgeopt.prune.layers import resolve_layer_ratios


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 16, 1)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


@pytest.mark.parametrize("bad, msg", [
    ({"ratio": 1.0}, "must be in [0, 1)"),
    ({"ratio": -0.1}, "must be in [0, 1)"),
    ({"method": "random"}, "must be one of"),
    ({"target": "macs"}, "needs method='structured'"),
    ({"schedule": "gradual", "method": "structured", "finetune_epochs": 1}, "iterative"),
    ({"schedule": "iterative"}, "finetune_epochs >= 1"),
    ({"layer_ratios": {"a": 1.5}}, "layer_ratios['a']"),
    ({"max_drop": -1.0}, "[0, 100]"),
    ({"max_layer_ratio": 1.0}, "below 1"),
])
def test_config_refuses_bad_values_in_one_line(bad, msg):
    with pytest.raises(ConfigError) as e:
        PruneConfig(**bad)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_config_round_trips_through_a_dict():
    cfg = PruneConfig(method="structured", ratio=0.3, exclude=("features.0",), layer_ratios={"x": 0.2})
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg


def test_prunable_layers_and_first_last_protection():
    m = _net()
    assert prunable_layers(m) == ["0", "3.0", "3.1", "6"]
    chosen, protected = select_layers(m)
    assert chosen == ["3.0", "3.1"]
    assert protected == {"0": "first layer", "6": "last layer"}
    chosen, protected = select_layers(m, protect_first_last=False, exclude=["3.1"])
    assert chosen == ["0", "3.0", "6"] and protected == {"3.1": "excluded"}


def test_patterns_glob_regex_and_prefix():
    m = _net()
    assert select_layers(m, include=["3"], protect_first_last=False)[0] == ["3.0", "3.1"]
    assert select_layers(m, include=["3.*"], protect_first_last=False)[0] == ["3.0", "3.1"]
    assert select_layers(m, include=["re:3\\.1|6"], protect_first_last=False)[0] == ["3.1", "6"]


def test_a_pattern_naming_nothing_lists_near_names():
    with pytest.raises(ConfigError) as e:
        select_layers(_net(), exclude=["3.2"])
    assert "matches no prunable layer" in str(e.value) and "3.1" in str(e.value)


def test_layer_ratio_table_resolves_patterns_and_refuses_unknown_layers():
    names = ["features.1.conv.0", "features.1.conv.1", "classifier"]
    got = resolve_layer_ratios(names[:2], {"features.1.*": 0.5, "features.1.conv.1": 0.8}, 0.1)
    assert got == {"features.1.conv.0": 0.5, "features.1.conv.1": 0.8}
    with pytest.raises(ConfigError) as e:
        resolve_layer_ratios(names, {"features.1.conv.2": 0.5}, 0.1)
    assert "does not exist" in str(e.value) and "features.1.conv.0" in str(e.value)
