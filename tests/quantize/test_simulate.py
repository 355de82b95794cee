"""QuantSim's requantized fx nodes, against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.quantize.simulate import QuantSim


class _AddThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + x)


def _sim(**kw):
    gm = torch.fx.symbolic_trace(_AddThenLinear())
    w = {"dequantized": torch.ones(1, 2), "scale": torch.ones(1), "zero_point": 0, "dtype": "int8", "axis": 0}
    return QuantSim(gm, {"fc": {"weight": w}}, **kw)


def test_requantized_node_feeds_its_users_while_a_layer_is_enabled():
    # x + x = [1.4, 1.4] -> uint8 with scale 0.5 -> [1.5, 1.5]; the fc sums 3.0 (float: 2.8)
    sim = _sim(activations=[{"node": "add", "scale": 0.5, "zero_point": 0, "dtype": "uint8"}])
    x = torch.tensor([[0.7, 0.7]])
    with torch.no_grad():
        assert sim(x).item() == pytest.approx(3.0)
        sim.set_enabled([])  # float: no layer, no requantization
        assert sim(x).item() == pytest.approx(2.8)


def test_unknown_node_is_a_config_error():
    with pytest.raises(ConfigError, match="no fx node 'sub'"):
        _sim(activations=[{"node": "sub", "scale": 0.5, "zero_point": 0, "dtype": "uint8"}])


def test_activations_need_a_graph_module():
    m = _AddThenLinear()
    with pytest.raises(ConfigError, match="not a GraphModule"):
        QuantSim(m, {}, activations=[{"node": "add", "scale": 0.5, "zero_point": 0, "dtype": "uint8"}])
