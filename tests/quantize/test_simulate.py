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


def _hardswish_linear(bias: float = 0.3):
    m = nn.Sequential(nn.Hardswish(inplace=True), nn.Linear(2, 1))
    with torch.no_grad():
        m[1].weight.fill_(1.0)
        m[1].bias.fill_(bias)
    return torch.fx.symbolic_trace(m.eval())


def _fc_qparams():
    w = {"dequantized": torch.ones(1, 2), "scale": torch.ones(1), "zero_point": 0, "dtype": "int8", "axis": 0}
    return {"1": {"weight": w}}


def test_recomputed_node_requantizes_inside_the_op_and_leaves_its_input_alone():
    """Hardswish recomputed as x * HardSigmoid(x) with the gate in steps of 1/4: x = [0.4, 1.0]
    gives gates [0.567, 0.667] -> [0.5, 0.75], so 0.2 + 0.75 = 0.95 (float: 0.227 + 0.667 = 0.893)."""
    from edgeopt.quantize.ort_chain import OnnxChain

    ops = [("HardSigmoid", ["x"], "g", {"alpha": 1 / 6, "beta": 0.5}), ("Mul", ["x", "g"], "y", {})]
    chain = OnnxChain(ops, {}, {"g": {"scale": 0.25, "zero_point": 0, "dtype": "uint8"}}, "x", "y")
    sim = QuantSim(_hardswish_linear(0.0), _fc_qparams(),
                   activations=[{"node": "_0", "recompute": chain, "input": 0, "tensors": ["g"]}])
    x = torch.tensor([[0.4, 1.0]])
    with torch.no_grad():
        assert sim(x).item() == pytest.approx(0.95)
        assert torch.equal(x, torch.tensor([[0.4, 1.0]]))  # the inplace Hardswish no longer rewrites its input
        sim.set_enabled([])
        assert sim(x).item() == pytest.approx(0.4 * 3.4 / 6 + 1.0 * 4 / 6)


def test_linear_product_is_requantized_before_its_bias():
    # hardswish([3, 3]) = [3, 3]; product 6.0 -> uint8 steps of 4 -> 8.0; + bias 0.3 = 8.3 (float 6.3)
    sim = QuantSim(_hardswish_linear(), _fc_qparams(),
                   activations=[{"node": "_1", "before_bias": True, "scale": 4.0, "zero_point": 0, "dtype": "uint8"}])
    x = torch.tensor([[3.0, 3.0]])
    with torch.no_grad():
        assert sim(x).item() == pytest.approx(8.3)
        sim.set_enabled([])
        assert sim(x).item() == pytest.approx(6.3)
    with pytest.raises(ConfigError, match="not a Linear layer"):
        QuantSim(_hardswish_linear(), _fc_qparams(),
                 activations=[{"node": "_0", "before_bias": True, "scale": 4.0, "zero_point": 0, "dtype": "uint8"}])


def test_quantized_parameters_are_used_while_a_layer_is_enabled():
    # the artifact stores the bias 0.3 as 0.25: 3 + 3 + 0.25 = 6.25 (float 6.3)
    sim = QuantSim(_hardswish_linear(), _fc_qparams(), params={"1.bias": torch.tensor([0.25])})
    x = torch.tensor([[3.0, 3.0]])
    with torch.no_grad():
        assert sim(x).item() == pytest.approx(6.25)
        sim.set_enabled([])
        assert sim(x).item() == pytest.approx(6.3)
    with pytest.raises(ConfigError, match="does not fit"):
        QuantSim(_hardswish_linear(), {}, params={"1.bias": torch.tensor([0.25, 0.5])})
    with pytest.raises(ConfigError, match="no parameter '1.scale'"):
        QuantSim(_hardswish_linear(), {}, params={"1.scale": torch.tensor([0.25])})
