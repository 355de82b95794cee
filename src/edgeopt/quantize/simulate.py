"""A fake-quant PyTorch simulation of an int8 model: the reference every artifact is checked against.

:class:`QuantSim` wraps a float model (batch norm already folded) and, for each chosen
Conv/Linear layer, replaces its weight by the fake-quantized weight and fake-quantizes
its input with given scales and zero points. Layers can be switched on and off without
re-calibrating, which is what makes the per-layer sensitivity scan cheap (one forward
pass per configuration instead of one backend conversion).

Two sources of quantization parameters:

* :func:`calibrate` observes the inputs of every layer on calibration images and picks
  ranges with the chosen method (minmax, percentile, entropy) from
  :mod:`edgeopt.quantize.math`; the sensitivity scan uses these.
* a backend reads the scales back from the artifact it built (the ONNX Runtime backend
  reads the QDQ file's initializers), so the reference computes with the artifact's own
  numbers.

Beyond layer inputs, a reference can fake-quantize the value of any node of a
``torch.fx`` model (``activations``): the ONNX Runtime backend uses that for every tensor
its QDQ file requantizes, e.g. the residual adds of MobileNetV2, whose requantized sum
feeds both the next conv and the next add. What stays out: integer rounding inside the
accumulators; the agreement figure in every QuantResult measures how much it matters.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.quantize import math as qm
from edgeopt.quantize.layers import QUANTIZABLE


def weight_qparams(weight: torch.Tensor, per_channel: bool = True) -> dict[str, Any]:
    """Symmetric int8 weight parameters (per output channel, axis 0, or per tensor).

    Example:
        >>> p = weight_qparams(torch.tensor([[1.0, -2.0], [0.5, 0.25]]))
        >>> [round(float(s), 5) for s in p["scale"]], p["axis"]
        ([0.01575, 0.00394], 0)
    """
    w = weight.detach().float()
    if per_channel:
        lo, hi = qm.minmax_range(w, axis=0)
        axis = 0
    else:
        lo, hi = w.min(), w.max()
        axis = None
    scale, zp = qm.choose_qparams(lo, hi, dtype="int8", symmetric=True, narrow_range=True)
    return {"scale": scale, "zero_point": zp, "dtype": "int8", "axis": axis, "narrow_range": True}


def activation_qparams(lo: float, hi: float, symmetric: bool = False) -> dict[str, Any]:
    """uint8 asymmetric (default) or int8 symmetric parameters for an activation range."""
    dtype = "int8" if symmetric else "uint8"
    scale, zp = qm.choose_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)), dtype=dtype,
                                  symmetric=symmetric)
    return {"scale": float(scale), "zero_point": int(zp), "dtype": dtype, "axis": None,
            "range": (float(lo), float(hi))}


def fake_quantize_weight(weight: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    scale, zp = p["scale"], p["zero_point"]
    if p.get("narrow_range"):  # int8 weights in [-127, 127]: what ORT and PyTorch store
        q = torch.round(weight / _bcast(scale, weight, p.get("axis"))) + _bcast(zp, weight, p.get("axis"))
        q = q.clamp(-127, 127)
        return (q - _bcast(zp, weight, p.get("axis"))) * _bcast(scale, weight, p.get("axis"))
    return qm.fake_quantize(weight, scale, zp, dtype=p["dtype"], axis=p.get("axis"))


def _bcast(v: Any, like: torch.Tensor, axis: int | None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32)
    if axis is None or t.ndim == 0:
        return t
    shape = [1] * like.ndim
    shape[axis] = -1
    return t.reshape(shape)


class _Observer:
    """Running statistics of one layer's input: min/max and a histogram when needed."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.hist = qm.Histogram() if method in ("percentile", "entropy") else None
        self.lo = float("inf")
        self.hi = float("-inf")

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        if self.hist is not None:
            self.hist.update(x)

    def range(self, percentile: float, symmetric: bool) -> tuple[float, float]:
        if self.method == "minmax" or self.hist is None:
            return self.lo, self.hi
        if self.method == "percentile":
            lo, hi = qm.percentile_range(self.hist, percentile=percentile, symmetric=symmetric)
        else:
            lo, hi = qm.entropy_range(self.hist)
        # never widen beyond what was observed
        return max(float(lo), self.lo), min(float(hi), self.hi)


def calibrate(
    model: nn.Module, calibration: torch.Tensor, layers: Iterable[str], *, method: str = "minmax",
    percentile: float = 99.999, symmetric_activations: bool = False, per_channel: bool = True,
    batch_size: int = 128,
) -> dict[str, dict[str, Any]]:
    """Observe every layer's input on ``calibration`` and pick int8 parameters.

    Returns ``{layer: {"weight": {...}, "input": {...}}}`` (scale, zero point, dtype,
    axis; the input entry also holds the chosen float ``range``).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
        >>> p = calibrate(m, torch.randn(16, 3, 8, 8), ["0", "2"])
        >>> p["2"]["input"]["dtype"], p["2"]["input"]["range"][0] == 0.0
        ('uint8', True)
    """
    modules = dict(model.named_modules())
    layers = list(layers)
    for name in layers:
        if name not in modules:
            raise ConfigError(f"calibrate: model has no layer {name!r}")
    observers = {n: _Observer(method) for n in layers}
    hooks = [modules[n].register_forward_pre_hook(lambda mod, args, n=n: observers[n].update(args[0]))
             for n in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(calibration), batch_size):
                model(calibration[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out: dict[str, dict[str, Any]] = {}
    for n in layers:
        lo, hi = observers[n].range(percentile, symmetric_activations)
        out[n] = {
            "weight": weight_qparams(modules[n].weight, per_channel),
            "input": activation_qparams(lo, hi, symmetric_activations),
        }
    return out


def _fake_quantize_7bit(x: torch.Tensor) -> torch.Tensor:
    """Per-batch asymmetric fake-quantization to ``[0, 127]`` (PyTorch's dynamic ``reduce_range``).

    Example:
        >>> x = torch.tensor([-1.0, 0.0, 0.011, 1.54])  # step (1.54 + 1) / 127 = 0.02
        >>> [round(v, 4) for v in _fake_quantize_7bit(x).tolist()]
        [-1.0, 0.0, 0.02, 1.54]
    """
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 127 if hi > lo else 1.0
    zp = min(max(round(-lo / scale), 0), 127)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 127)
    return (q - zp) * scale


class QuantSim(nn.Module):
    """A float model whose chosen layers compute with fake-quantized weights and inputs.

    Args:
        model: the float model, batch norm folded (:func:`~edgeopt.quantize.layers.fold_batchnorm`);
            it is deep-copied.
        qparams: ``{layer: {"weight": ..., "input": ...}}`` from :func:`calibrate` or read
            from an artifact.
        enabled: layers simulated in int8; None: every layer in ``qparams``.
        output: the quantization of the model's output (logits), when the artifact
            requantizes it (a QDQ graph that ends in Q -> DQ).
        activations: ``[{"node", "scale", "zero_point", "dtype"}]``: further values the
            artifact requantizes, by the name of the ``torch.fx`` node that computes them
            (``model`` must then be a GraphModule, as :func:`fold_batchnorm` returns);
            fake-quantized while any layer is enabled. Two more kinds of entry requantize
            inside a node: ``{"node", "recompute": module, "input": i}`` replaces the node's
            value by ``module(node.args[i])`` (an activation the artifact decomposes, e.g.
            Hardswish as ``x * HardSigmoid(x)`` with the gate requantized), and
            ``{"node", "before_bias": True, "scale", ...}`` requantizes a Linear layer's
            product before its bias is added.
        params: ``{parameter or buffer name: value}``: float parameters the artifact stores
            in int8 (LayerNorm weights, layer scales), dequantized; used while any layer is enabled.

    Example:
        >>> m = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
        >>> x = torch.randn(8, 3, 2, 2)
        >>> sim = QuantSim(m, calibrate(m, x, ["1"]))
        >>> bool((sim(x) - m(x)).abs().max() < 0.1)
        True
    """

    def __init__(self, model: nn.Module, qparams: dict[str, dict[str, Any]],
                 enabled: Iterable[str] | None = None, output: dict[str, Any] | None = None,
                 activations: Iterable[dict[str, Any]] = (),
                 params: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.output = output  # {"scale", "zero_point", "dtype"}: the artifact requantizes its logits
        self.model = copy.deepcopy(model).eval()
        self.qparams = qparams
        self.activations = list(activations)
        self._requant_on = {"on": False}  # shared with the inserted _Requant modules
        if self.activations:
            _insert_requant(self.model, self.activations, self._requant_on)
        self._params: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # name: (tensor, float, int8)
        for name, value in (params or {}).items():
            t = _tensor(self.model, name)
            q = torch.as_tensor(value, dtype=t.dtype)
            if q.shape != t.shape:
                raise ConfigError(f"QuantSim: parameter {name}: value of shape {tuple(q.shape)} does not fit "
                                  f"its {tuple(t.shape)}")
            self._params[name] = (t, t.detach().clone(), q)
        mods = dict(self.model.named_modules())
        self._float_w: dict[str, torch.Tensor] = {}
        self._quant_w: dict[str, torch.Tensor] = {}
        self._float_b: dict[str, torch.Tensor] = {}
        self._quant_b: dict[str, torch.Tensor] = {}
        for name, p in qparams.items():
            mod = mods.get(name)
            if mod is None or not isinstance(mod, QUANTIZABLE):
                raise ConfigError(f"QuantSim: {name!r} is not a Conv/Linear layer of the model")
            self._float_w[name] = mod.weight.detach().clone()
            b = p.get("bias")
            if b is not None and mod.bias is not None:  # the artifact's int32 bias, dequantized
                self._float_b[name] = mod.bias.detach().clone()
                self._quant_b[name] = torch.as_tensor(b["dequantized"], dtype=torch.float32).reshape(mod.bias.shape)
            w = p.get("weight")
            if w is not None and w.get("dequantized") is not None:  # the artifact's own int8 weights
                deq = torch.as_tensor(w["dequantized"], dtype=torch.float32)
                if deq.shape != self._float_w[name].shape:
                    raise ConfigError(f"QuantSim: {name}: int8 weight of shape {tuple(deq.shape)} does not fit "
                                      f"the layer's {tuple(self._float_w[name].shape)}")
                self._quant_w[name] = deq
            elif w is not None:
                self._quant_w[name] = fake_quantize_weight(self._float_w[name], w)
            mod.register_forward_pre_hook(self._input_hook(name))
        self._mods = mods
        self.enabled: set[str] = set()
        self.set_enabled(qparams if enabled is None else enabled)
        for attr in ("edgeopt_spec", "edgeopt_arch"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def _input_hook(self, name: str):
        def hook(mod: nn.Module, args: tuple) -> tuple | None:
            p = self.qparams[name].get("input")
            if name not in self.enabled or p is None:
                return None
            if p.get("dynamic"):  # range of this batch, uint8 asymmetric: what dynamic kernels do
                x = args[0]
                if p.get("reduce_range"):  # fbgemm/x86 dynamic kernels: 7-bit, [0, 127]
                    return (_fake_quantize_7bit(x), *args[1:])
                dp = activation_qparams(float(x.min()), float(x.max()))
                return (qm.fake_quantize(x, dp["scale"], dp["zero_point"], dtype="uint8"), *args[1:])
            return (qm.fake_quantize(args[0], p["scale"], p["zero_point"], dtype=p["dtype"]), *args[1:])
        return hook

    def set_enabled(self, layers: Iterable[str]) -> None:
        """Simulate exactly ``layers`` in int8 (the others compute in float)."""
        layers = set(layers)
        unknown = layers - set(self.qparams)
        if unknown:
            raise ConfigError(f"QuantSim: no quantization parameters for {sorted(unknown)[:3]}")
        with torch.no_grad():
            for name in self.qparams:
                w = self._quant_w.get(name) if name in layers else None
                self._mods[name].weight.copy_(self._float_w[name] if w is None else w)
                if name in self._quant_b:
                    self._mods[name].bias.copy_(self._quant_b[name] if name in layers else self._float_b[name])
            for t, flt, q in self._params.values():
                t.copy_(q if layers else flt)
        self.enabled = layers
        self._requant_on["on"] = bool(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if self.output is not None and self.enabled:
            y = qm.fake_quantize(y, self.output["scale"], self.output["zero_point"], dtype=self.output["dtype"])
        return y


class _Requant(nn.Module):
    """Fake-quantizes the value it is given while ``state["on"]`` (a node QuantSim inserts)."""

    def __init__(self, p: dict[str, Any], state: dict[str, bool]) -> None:
        super().__init__()
        self.scale, self.zero_point, self.dtype = float(p["scale"]), int(p["zero_point"]), str(p["dtype"])
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.state["on"]:
            return x
        return qm.fake_quantize(x, self.scale, self.zero_point, dtype=self.dtype)


class _Recompute(nn.Module):
    """The value ``module(x)`` instead of the node's own ``y`` while ``state["on"]``."""

    def __init__(self, module: nn.Module, state: dict[str, bool]) -> None:
        super().__init__()
        self.module = module
        self.state = state

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.module(x) if self.state["on"] else y


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    """A parameter or buffer by qualified name."""
    prefix, _, attr = name.rpartition(".")
    try:
        t = getattr(model.get_submodule(prefix) if prefix else model, attr)
    except AttributeError:
        t = None
    if not isinstance(t, torch.Tensor):
        raise ConfigError(f"QuantSim: the model has no parameter {name!r}")
    return t


class _BeforeBias(_Requant):
    """Its :meth:`hook`, a Linear's forward hook, computes ``requant(x @ W^T) + b`` while
    ``state["on"]`` (x: the layer's input after QuantSim's input hook)."""

    def hook(self, mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not self.state["on"]:
            return out
        y = self(nn.functional.linear(args[0], mod.weight))
        return y if mod.bias is None else y + mod.bias


def _insert_requant(gm: nn.Module, activations: list[dict[str, Any]], state: dict[str, bool]) -> None:
    """After each named fx node, a :class:`_Requant` that every user of the node then reads;
    then the recomputed nodes (reading their input as requantized) and the Linear hooks."""
    if not isinstance(gm, torch.fx.GraphModule):
        raise ConfigError("QuantSim: activations are placed by torch.fx node name; the model is not a GraphModule")
    nodes = {n.name: n for n in gm.graph.nodes}
    for a in activations:
        node = nodes.get(a["node"])
        if node is None:
            raise ConfigError(f"QuantSim: the model has no fx node {a['node']!r} to requantize")
        if a.get("before_bias") and not (node.op == "call_module"
                                         and isinstance(gm.get_submodule(node.target), nn.Linear)):
            raise ConfigError(f"QuantSim: fx node {a['node']!r} is not a Linear layer (before_bias)")
    plain = [a for a in activations if "recompute" not in a and not a.get("before_bias")]
    for i, a in enumerate(plain):
        node = nodes[a["node"]]
        name = f"edgeopt_requant_{i}"
        gm.add_submodule(name, _Requant(a, state))
        users = list(node.users)
        with gm.graph.inserting_after(node):
            rq = gm.graph.call_module(name, (node,))
        for u in users:
            u.replace_input_with(node, rq)
    for i, a in enumerate(a for a in activations if "recompute" in a):
        node = nodes[a["node"]]
        x = node.args[a.get("input", 0)]
        if not isinstance(x, torch.fx.Node):
            raise ConfigError(f"QuantSim: argument {a.get('input', 0)} of fx node {a['node']!r} is not a tensor")
        # the node's own value stays the float fallback; it must not rewrite its input in place
        if node.op == "call_module" and getattr(gm.get_submodule(node.target), "inplace", False):
            gm.get_submodule(node.target).inplace = False
        elif node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        name = f"edgeopt_recompute_{i}"
        gm.add_submodule(name, _Recompute(copy.deepcopy(a["recompute"]), state))
        users = list(node.users)
        with gm.graph.inserting_after(node):
            rc = gm.graph.call_module(name, (x, node))
        for u in users:
            u.replace_input_with(node, rc)
    for i, a in enumerate(a for a in activations if a.get("before_bias")):
        bb = _BeforeBias(a, state)
        gm.add_submodule(f"edgeopt_before_bias_{i}", bb)  # deep-copied with the model, hook included
        gm.get_submodule(nodes[a["node"]].target).register_forward_hook(bb.hook)
    gm.graph.lint()
    gm.recompile()
