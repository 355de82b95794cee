"""Where each tensor a QDQ ONNX file requantizes lives in the PyTorch model, for its fake-quant reference.

ONNX names do not say where a tensor comes from in PyTorch (the exporter flattens scopes:
``/conv.2_1/Conv``, ``/Add_3``; ORT's pre-processing inlines functions into tensors such as
``_inlfunc_HardSwish_HS_X``), so tensors are matched by value: the float ONNX model the
file was quantized from runs on a few images with the requantized tensors as outputs, the
``torch.fx`` GraphModule runs node by node, and values are compared (within ``rtol`` of
their magnitude, also in a permuted layout: ORT's transpose optimizer moves ConvNeXt's
residual adds to NHWC). Three kinds of requantized tensor are simulated:

* one an fx node computes (a conv's output, a residual sum, an SE gate, ...): the reference
  fake-quantizes it after that node;
* one inside an op PyTorch computes in one piece that the file decomposes into elementwise
  ops (Hardswish = ``x * HardSigmoid(x)``, SiLU = ``x * Sigmoid(x)``, GELU with ``Erf``):
  the node's value is recomputed with the file's ops (:class:`~edgeopt.quantize.ort_chain.OnnxChain`),
  requantizing inside;
* the product of a Linear the exporter wrote as ``MatMul`` + ``Add`` (bias), which the file
  requantizes before adding the bias (ConvNeXt's MLPs on NHWC tensors).

:func:`quantized_parameters` reads the float parameters the file stores in int8 (LayerNorm
weights, ConvNeXt's layer scale): the reference computes with their dequantized values.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.quantize.ort_chain import ELEMENTWISE, OnnxChain

#: how many elementwise ops a decomposed activation may span (GELU: Div, Erf, Add, Mul, Mul)
_MAX_CHAIN = 8


def _graph(proto: Any) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, Any]]:
    """producer, consumers and initializer maps of an ONNX graph."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers, {i.name: i for i in proto.graph.initializer}


def requantized_tensors(qdq: Any) -> dict[str, dict[str, Any]]:
    """``{tensor: {"scale", "zero_point", "dtype"}}`` for every activation a QDQ graph
    requantizes with a per-tensor QuantizeLinear, except the graph input (each layer's
    input quantization covers it) and the logits (QuantSim's ``output``)."""
    from onnx import numpy_helper

    _, consumers, inits = _graph(qdq)
    graph_inputs = {i.name for i in qdq.graph.input}
    graph_outputs = {o.name for o in qdq.graph.output}
    wanted: dict[str, dict[str, Any]] = {}
    for n in qdq.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or n.input[0] in graph_inputs:
            continue
        if any(o in graph_outputs for c in consumers.get(n.output[0], []) for o in c.output):
            continue  # Q -> DQ -> graph output: the logits
        if n.input[1] not in inits or len(n.input) < 3 or n.input[2] not in inits:
            continue
        scale = numpy_helper.to_array(inits[n.input[1]])
        zp = numpy_helper.to_array(inits[n.input[2]])
        if scale.size != 1:  # per-channel activations: not something quantize_static writes
            continue
        wanted[n.input[0]] = {"scale": float(scale), "zero_point": int(zp),
                              "dtype": "uint8" if zp.dtype == np.uint8 else "int8"}
    return wanted


def _run(proto: Any, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Values of the named tensors of a float ONNX model on ``images`` (optimizations off)."""
    import onnx
    import onnxruntime as ort

    if not names:
        return {}
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    del p.graph.output[:]
    p.graph.output.extend(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None) for v in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = sess.run(names, {sess.get_inputs()[0].name: images.numpy().astype(np.float32)})
    return {n: torch.from_numpy(np.asarray(v)) for n, v in zip(names, out)}


class _Values:
    """Every fx node's output on the images, in execution order, and lookup by value."""

    def __init__(self, model: torch.fx.GraphModule, images: torch.Tensor, rtol: float) -> None:
        self.rtol = rtol
        self.nodes = {n.name: n for n in model.graph.nodes}
        self.order: list[str] = []
        self.value: dict[str, torch.Tensor] = {}
        order, value = self.order, self.value

        class _Record(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                out = super().run_node(n)
                if n.op not in ("placeholder", "output", "get_attr") and isinstance(out, torch.Tensor):
                    order.append(n.name)
                    value[n.name] = out.detach().clone()  # an inplace user (Hardswish) rewrites it
                return out

        with torch.no_grad():
            _Record(model).run(images)
        self.by_shape: dict[tuple[int, ...], list[str]] = {}
        for n in order:
            self.by_shape.setdefault(tuple(self.value[n].shape), []).append(n)

    def same(self, t: torch.Tensor, ref: torch.Tensor) -> bool:
        return t.shape == ref.shape and float((t - ref).abs().max()) <= self.rtol * (1.0 + float(ref.abs().max()))

    def find(self, ref: torch.Tensor) -> list[tuple[str, list[int] | None]]:
        """fx nodes whose value equals ``ref`` (or ``ref.permute(perm)``, batch axis kept
        first), in execution order, with the permutation (None: same layout)."""
        hits: list[tuple[int, str, list[int] | None]] = []
        for perm in _perms(ref):
            r = ref.permute(perm).contiguous() if perm else ref
            for n in self.by_shape.get(tuple(r.shape), []):
                if self.same(self.value[n], r):
                    hits.append((self.order.index(n), n, perm))
        return [(n, p) for _, n, p in sorted(hits, key=lambda h: h[0])]


def _perms(ref: torch.Tensor) -> list[list[int] | None]:
    out: list[list[int] | None] = [None]
    if ref.ndim >= 3:
        out += [[0, *p] for p in itertools.permutations(range(1, ref.ndim)) if list(p) != list(range(1, ref.ndim))]
    return out


def _inverse(perm: list[int] | None) -> list[int] | None:
    return None if perm is None else [perm.index(i) for i in range(len(perm))]


def match_activations(float_onnx: str | Path, qdq_onnx: str | Path, model: nn.Module, images: torch.Tensor,
                      rtol: float = 1e-4) -> tuple[list[dict[str, Any]], list[str]]:
    """Where the reference simulates each tensor the QDQ file requantizes.

    Returns ``(activations, unmatched)``: entries for :class:`~edgeopt.quantize.simulate.QuantSim`'s
    ``activations`` (``{"node", "tensor", "scale", "zero_point", "dtype"}`` for a node's
    value; ``{"node", "recompute": OnnxChain, "tensors"}`` for a decomposed activation;
    ``{"node", "before_bias": True, "tensor", ...}`` for a Linear's product) and the names
    of the requantized tensors none of these covers (all of them when ``model`` is not a
    GraphModule, e.g. fx could not trace it).
    """
    import onnx

    qdq = onnx.load(str(qdq_onnx))
    wanted = requantized_tensors(qdq)
    if not wanted or not isinstance(model, torch.fx.GraphModule):
        return [], sorted(wanted)
    proto = onnx.load(str(float_onnx))
    producer, consumers, inits = _graph(proto)
    known = [v for v in wanted if v in producer]
    values = _run(proto, known, images)
    fx = _Values(model, images, rtol)
    activations: list[dict[str, Any]] = []
    left: list[str] = []
    for v in known:
        hits = fx.find(values[v])
        if hits:
            activations.append({"node": hits[0][0], "tensor": v, **wanted[v]})
        else:
            left.append(v)
    covered: set[str] = set()
    if left:
        found = _linear_products(left, qdq, proto, model, wanted) + _decomposed(
            left, qdq, proto, (producer, consumers, inits), fx, values, images, wanted)
        for a in found:
            covered |= set(a.get("tensors") or [a["tensor"]])
        activations += found
    unmatched = sorted([v for v in wanted if v not in producer] + [v for v in left if v not in covered])
    return activations, unmatched


def simulated_tensors(activations: list[dict[str, Any]]) -> int:
    """How many requantized tensors ``activations`` covers."""
    return sum(len(a["tensors"]) if "tensors" in a else 1 for a in activations)


def _linear_products(left: list[str], qdq: Any, proto: Any, model: torch.fx.GraphModule,
                     wanted: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``MatMul(x, W) -> Q/DQ -> Add(bias)``: a Linear whose product the file requantizes."""
    from edgeopt.quantize.ort_qdq_file import weight_nodes

    producer, consumers, _ = _graph(proto)
    layers = weight_nodes(qdq)  # node name -> layer (MatMul nodes keep their names)
    calls = {n.target: n.name for n in model.graph.nodes if n.op == "call_module"}
    mods = dict(model.named_modules())
    out = []
    for v in left:
        p = producer.get(v)
        layer = layers.get(p.name) if p is not None and p.op_type == "MatMul" else None
        users = consumers.get(v, [])
        if (layer is None or layer not in calls or not isinstance(mods.get(layer), nn.Linear)
                or mods[layer].bias is None or len(users) != 1 or users[0].op_type != "Add"):
            continue
        out.append({"node": calls[layer], "before_bias": True, "tensor": v, **wanted[v]})
    return out


def _decomposed(left: list[str], qdq: Any, proto: Any, graph: tuple, fx: _Values, values: dict[str, torch.Tensor],
                images: torch.Tensor, wanted: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Requantized tensors inside an elementwise chain ``x -> ... -> y`` that one fx node
    computes from one input (Hardswish, SiLU, GELU): an :class:`OnnxChain` per such node."""
    producer, consumers, inits = graph

    def const(t: str) -> bool:
        return t == "" or t in inits or (t in producer and producer[t].op_type == "Constant")

    def elementwise(n: Any) -> bool:
        return n is not None and n.op_type in ELEMENTWISE

    # candidate outputs y (downstream through elementwise ops) and inputs x (upstream)
    downs: dict[str, list[str]] = {}
    ups: dict[str, list[str]] = {}
    for v in left:
        if not elementwise(producer.get(v)):
            continue
        down, frontier = [], [v]
        for _ in range(_MAX_CHAIN):
            frontier = [o for t in frontier for c in consumers.get(t, []) if elementwise(c) for o in c.output]
            down += [t for t in frontier if t not in down]
        up, frontier = [], [v]
        for _ in range(_MAX_CHAIN):
            nxt = []
            for t in frontier:
                p = producer.get(t)
                for i in (p.input if elementwise(p) else []):
                    if not const(i) and i not in up:
                        up.append(i)
                        nxt.append(i)
            frontier = nxt
        downs[v], ups[v] = down, up
    need = sorted({t for v in downs for t in downs[v] + ups[v]} - set(values))
    values = {**values, **_run(proto, need, images)}

    order = {id(n): i for i, n in enumerate(proto.graph.node)}
    entries: dict[str, dict[str, Any]] = {}
    for v in left:
        if v not in downs or any(v in e["tensors"] for e in entries.values()):
            continue
        for y in downs[v]:
            entry = next((e for node, perm_y in fx.find(values[y])
                          if (e := _chain_for(node, perm_y, y, v, ups[v], fx, values, producer, consumers,
                                              const, order, qdq, wanted)) is not None), None)
            if entry is not None:
                if entry["node"] not in entries:
                    entries[entry["node"]] = entry
                break
    return list(entries.values())


def _chain_for(node_name: str, perm_y: list[int] | None, y: str, v: str, ups: list[str], fx: _Values,
               values: dict[str, torch.Tensor], producer: dict[str, Any], consumers: dict[str, list[Any]],
               const: Any, order: dict[int, int], qdq: Any, wanted: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The :class:`OnnxChain` entry recomputing fx node ``node_name`` (whose value is ONNX ``y``)
    from its one tensor input, if the ONNX ops between that input and ``y`` are elementwise
    and include ``v``; else None."""
    node = fx.nodes[node_name]
    if node.op not in ("call_module", "call_function", "call_method"):
        return None
    tensor_args = [i for i, a in enumerate(node.args) if isinstance(a, torch.fx.Node)]
    if len(tensor_args) != 1 or any(isinstance(a, torch.fx.Node) for a in node.kwargs.values()):
        return None
    a = node.args[tensor_args[0]]
    if a.name not in fx.value:
        return None
    x, perm_x = None, None
    for t in ups:
        for perm in _perms(values[t]):
            r = values[t].permute(perm) if perm else values[t]
            if fx.same(fx.value[a.name], r):
                x, perm_x = t, perm
                break
        if x is not None:
            break
    if x is None:
        return None
    region: dict[int, Any] = {}
    stack = [producer.get(y)]
    while stack:
        n = stack.pop()
        if n is None or n.op_type not in ELEMENTWISE or len(region) > _MAX_CHAIN:
            return None
        if id(n) in region:
            continue
        region[id(n)] = n
        stack += [producer.get(i) for i in n.input if i != x and not const(i)]
    ops = sorted(region.values(), key=lambda n: order[id(n)])
    outputs = {o for n in ops for o in n.output}
    if v not in outputs:
        return None
    inside = {id(n) for n in ops}
    if any(id(c) not in inside for t in outputs - {y} for c in consumers.get(t, [])):
        return None  # an intermediate tensor is used outside the chain
    constants = _constants(ops, const, qdq)
    requant = {t: wanted[t] for t in outputs - {y} if t in wanted}
    from onnx import helper

    chain = OnnxChain([(n.op_type, list(n.input), n.output[0], {at.name: helper.get_attribute_value(at)
                                                                 for at in n.attribute}) for n in ops],
                      constants, requant, x, y, perm_in=_inverse(perm_x), perm_out=perm_y)
    return {"node": node_name, "recompute": chain, "input": tensor_args[0], "tensors": sorted(requant)}


def _constants(ops: list[Any], const: Any, qdq: Any) -> dict[str, torch.Tensor]:
    """The chain's constant inputs as the QDQ file computes with them: dequantized where
    the file stores a constant in int8 (``Add(Erf(.), 1)``'s one, GELU's one half)."""
    from onnx import numpy_helper

    q_producer, _, q_inits = _graph(qdq)
    q_by_output = {o: n for n in qdq.graph.node for o in n.output}
    out: dict[str, torch.Tensor] = {}
    for n in ops:
        qn = q_by_output.get(n.output[0])
        for k, name in enumerate(n.input):
            if not name or not const(name) or name in out:
                continue
            value = None
            qi = qn.input[k] if qn is not None and k < len(qn.input) else None
            dq = q_producer.get(qi) if qi is not None else None
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in q_inits:
                value = dequantize_initializer(dq, q_inits)
            elif qi is not None and qi in q_inits:
                value = numpy_helper.to_array(q_inits[qi]).astype(np.float32)
            elif qi is not None and qi in q_producer and q_producer[qi].op_type == "Constant":
                value = numpy_helper.to_array(q_producer[qi].attribute[0].t).astype(np.float32)
            if value is None:
                return {}
            out[name] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def dequantize_initializer(dq: Any, inits: dict[str, Any]) -> np.ndarray:
    """The float values of ``DequantizeLinear(initializer, scale, zero_point)`` (per tensor or per ``axis``)."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zp = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
          if len(dq.input) > 2 and dq.input[2] in inits else np.zeros_like(scale))
    if scale.ndim == 1 and q.ndim > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


def quantized_parameters(qdq_onnx: str | Path, model: nn.Module, skip: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """``{parameter name: the file's dequantized value}`` for float parameters and buffers of
    ``model`` (not in ``skip``: the Conv/Linear weights and biases QuantSim already takes
    from the file) that the QDQ file stores in int8 or int32 (LayerNorm weights and biases,
    ConvNeXt's layer scale, ...). The file's initializer keeps the parameter's name
    (``features.1.0.layer_scale_quantized``); its shape may differ by singleton axes
    (``[1, 1, 1, 96]`` for ``[96, 1, 1]``). A value farther than one step from the float
    parameter is not the same tensor and is left out.
    """
    import onnx

    qdq = onnx.load(str(qdq_onnx))
    _, _, inits = _graph(qdq)
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    out: dict[str, torch.Tensor] = {}
    for n in qdq.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or not n.input[0].endswith("_quantized"):
            continue
        name = n.input[0][: -len("_quantized")]
        p = tensors.get(name)
        if p is None or name in skip or not p.is_floating_point():
            continue
        deq = torch.from_numpy(dequantize_initializer(n, inits))
        if [s for s in deq.shape if s != 1] != [s for s in p.shape if s != 1]:
            continue
        deq = deq.reshape(p.shape)
        step = float(np.abs(onnx.numpy_helper.to_array(inits[n.input[1]])).max())
        if float((deq - p.detach()).abs().max()) <= step * 0.5001 + 1e-7:
            out[name] = deq
    return out
