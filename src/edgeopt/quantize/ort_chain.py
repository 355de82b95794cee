"""An activation recomputed the way a QDQ ONNX file decomposes it, requantizing where the file does.

PyTorch computes Hardswish, SiLU or GELU in one op; the ONNX file computes them from
elementwise ops (``HardSwish`` becomes the inlined function ``x * HardSigmoid(x)``, whose
gate is ``_inlfunc_HardSwish_HS_X``; ``SiLU`` is ``x * Sigmoid(x)``; GELU is
``x * (1 + Erf(x / sqrt 2)) * 0.5``), and ONNX Runtime's quantizer requantizes the
intermediate tensors (the gate, ``1 + Erf``, ...). :class:`OnnxChain` evaluates such a chain
of ops in PyTorch with the file's own constants, fake-quantizing each intermediate tensor
with the file's scale and zero point; :class:`~edgeopt.quantize.simulate.QuantSim` puts
it in place of the fx node's value (``{"node", "recompute"}`` activations).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from edgeopt.quantize import math as qm

_UNARY = {"Sigmoid": torch.sigmoid, "Erf": torch.erf, "Tanh": torch.tanh, "Relu": torch.relu, "Exp": torch.exp,
          "Neg": torch.neg, "Sqrt": torch.sqrt, "Abs": torch.abs, "Softplus": F.softplus,
          "Reciprocal": torch.reciprocal, "Identity": lambda x: x}
_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow}
#: elementwise ONNX ops an :class:`OnnxChain` evaluates (inputs: one tensor and constants)
ELEMENTWISE = frozenset(_UNARY) | frozenset(_BINARY) | {"HardSigmoid", "HardSwish", "Clip", "LeakyRelu"}


def _eval(op: str, args: list[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    if op in _UNARY:
        return _UNARY[op](args[0])
    if op in _BINARY:
        return _BINARY[op](args[0], args[1])
    x = args[0]
    if op == "HardSigmoid":  # ONNX defaults alpha 0.2, beta 0.5 (HardSwish's: 1/6, 0.5)
        return torch.clamp(attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5), 0.0, 1.0)
    if op == "HardSwish":
        return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)
    if op == "LeakyRelu":
        return F.leaky_relu(x, attrs.get("alpha", 0.01))
    if op == "Clip":
        lo = args[1] if len(args) > 1 else None
        hi = args[2] if len(args) > 2 else None
        return torch.clamp(x, lo, hi)
    raise ValueError(f"OnnxChain: no PyTorch op for ONNX {op}")


class OnnxChain(nn.Module):
    """``x`` -> elementwise ONNX ops -> one output, requantizing the tensors the file requantizes.

    Args:
        ops: ``[(op_type, inputs, output, attrs)]`` in execution order; an input is the chain's
            input ``x``, an earlier op's output or a constant.
        constants: ``{name: Tensor}``: the file's constants (dequantized where the file
            stores them in int8).
        requant: ``{tensor: {"scale", "zero_point", "dtype"}}``: intermediate tensors to fake-quantize.
        x: the ONNX name of the input; ``y``: of the output.
        perm_in: permutes the PyTorch input into the file's layout (e.g. NCHW -> NHWC);
            ``perm_out`` the output back. None: same layout.

    Example:
        >>> ops = [("HardSigmoid", ["x"], "g", {"alpha": 1 / 6, "beta": 0.5}), ("Mul", ["x", "g"], "y", {})]
        >>> q = {"g": {"scale": 0.25, "zero_point": 0, "dtype": "uint8"}}  # the gate in steps of 1/4
        >>> OnnxChain(ops, {}, q, "x", "y")(torch.tensor([0.4, 1.0])).tolist()  # gates 0.567, 0.667
        [0.20000000298023224, 0.75]
    """

    def __init__(self, ops: list[tuple[str, list[str], str, dict[str, Any]]], constants: dict[str, torch.Tensor],
                 requant: dict[str, dict[str, Any]], x: str, y: str, perm_in: list[int] | None = None,
                 perm_out: list[int] | None = None) -> None:
        super().__init__()
        self.ops = [(op, list(ins), out, dict(attrs)) for op, ins, out, attrs in ops]
        self.constants = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in constants.items()}
        self.requant = {k: {"scale": float(p["scale"]), "zero_point": int(p["zero_point"]), "dtype": str(p["dtype"])}
                        for k, p in requant.items()}
        self.x, self.y = x, y
        self.perm_in, self.perm_out = perm_in, perm_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.x: x.permute(self.perm_in) if self.perm_in else x}
        for op, ins, out, attrs in self.ops:
            args = [env[i] if i in env else self.constants.get(i) for i in ins]
            y = _eval(op, args, attrs)
            p = self.requant.get(out)
            if p is not None:
                y = qm.fake_quantize(y, p["scale"], p["zero_point"], dtype=p["dtype"])
            env[out] = y
        y = env[self.y]
        return y.permute(self.perm_out) if self.perm_out else y

    def extra_repr(self) -> str:
        return f"{' -> '.join(op for op, *_ in self.ops)}, requantizes {len(self.requant)}"
