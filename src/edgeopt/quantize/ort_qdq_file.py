"""Reading a static int8 QDQ ONNX file back: which node computes which PyTorch layer, and the
scale / zero point of every tensor the file quantizes (weights, activations, the output).

The onnxruntime backend writes the file with ORT's quantizer; these readers give its
reference model and its checks the file's own numbers instead of recomputing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


#: key of :func:`read_qdq_qparams`'s entry for the quantized graph output (the logits)
OUTPUT_KEY = "<output>"


def weight_nodes(proto: Any) -> dict[str, str]:
    """ONNX node name -> PyTorch layer name, for Conv/Gemm/MatMul nodes whose weight
    initializer is named ``LAYER.weight`` (directly or through a DequantizeLinear), and for
    MatMul nodes with an anonymous weight (``onnx::MatMul_565``: a Linear on a 4-D tensor,
    exported as ``MatMul(x, W^T) + bias``) whose product is added to ``LAYER.bias``."""
    inits = {i.name for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out: dict[str, str] = {}
    for n in proto.graph.node:
        if n.op_type not in _WEIGHT_OPS or len(n.input) < 2:
            continue
        w = n.input[1]
        p = producer.get(w)
        if p is not None and p.op_type == "DequantizeLinear":
            w = p.input[0]
        for suffix in ("_quantized", ""):
            if w.endswith(".weight" + suffix) and (w in inits or p is not None):
                out[n.name] = w[: -len(".weight" + suffix)]
                break
        else:
            if n.op_type == "MatMul" and w in inits:
                bias = _bias_added(proto, n, producer)
                if bias is not None:
                    out[n.name] = bias[0][: -len(".bias")]
    return out


def _bias_added(proto: Any, node: Any, producer: dict[str, Any]) -> tuple[str, Any] | None:
    """``(LAYER.bias, its DequantizeLinear or None)`` when ``node``'s output (through a Q/DQ
    pair, in a QDQ file) feeds only an Add of the initializer ``LAYER.bias`` (directly or
    dequantized from ``LAYER.bias_quantized``)."""
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name for i in proto.graph.initializer}
    t = node.output[0]
    users = consumers.get(t, [])
    if len(users) == 1 and users[0].op_type == "QuantizeLinear":
        dqs = consumers.get(users[0].output[0], [])
        if len(dqs) == 1 and dqs[0].op_type == "DequantizeLinear":
            t = dqs[0].output[0]
            users = consumers.get(t, [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = next((i for i in users[0].input if i != t), None)
    dq = producer.get(other) if other is not None else None
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
        name = dq.input[0][: -len("_quantized")] if dq.input[0].endswith("_quantized") else dq.input[0]
        return (name, dq) if name.endswith(".bias") else None
    return (other, None) if other in inits and other.endswith(".bias") else None


def _dq_qparams(node: Any, inits: dict[str, np.ndarray]) -> dict[str, Any]:
    """Scale, zero point and dtype of a per-tensor DequantizeLinear (zero point 0, uint8
    when the node omits it, as ONNX specifies)."""
    zp = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else np.array(0, np.uint8)
    return {"scale": float(inits[node.input[1]]), "zero_point": int(zp),
            "dtype": "uint8" if zp.dtype == np.uint8 else "int8"}


def read_qdq_qparams(path: str | Path) -> dict[str, dict[str, Any]]:
    """The int8 weights and input scales of each quantized layer of a QDQ ONNX file.

    Returns ``{layer: {"weight": {"dequantized": Tensor in PyTorch layout, "scale", ...},
    "bias": {"dequantized": Tensor}, "input": {"scale", "zero_point", "dtype"}}}`` (bias
    when the file stores it as int32); a dynamically quantized layer's input entry is
    ``{"dynamic": True, ...}``.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    names = weight_nodes(proto)
    out: dict[str, dict[str, Any]] = {}
    for n in proto.graph.node:
        layer = names.get(n.name)
        if layer is None:
            continue
        entry: dict[str, Any] = {}
        wp = producer.get(n.input[1])
        if wp is not None and wp.op_type == "DequantizeLinear" and wp.input[0] in inits:
            q = inits[wp.input[0]].astype(np.float32)
            scale = inits[wp.input[1]].astype(np.float32)
            zp = inits[wp.input[2]].astype(np.float32) if len(wp.input) > 2 and wp.input[2] in inits else 0.0
            axis = next((a.i for a in wp.attribute if a.name == "axis"), 1)
            if scale.ndim == 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                deq = (q - np.reshape(zp, shape)) * np.reshape(scale, shape)
            else:
                deq = (q - zp) * scale
            if n.op_type == "MatMul" or n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute):  # ONNX MatMul weight is [in, out]; nn.Linear's is [out, in]
                deq = deq.T
            entry["weight"] = {"dequantized": torch.from_numpy(np.ascontiguousarray(deq)),
                               "scale": torch.from_numpy(np.atleast_1d(scale)), "zero_point": 0,
                               "dtype": "int8", "axis": 0 if scale.ndim == 1 else None}
        bp = producer.get(n.input[2]) if len(n.input) > 2 else None
        if "weight" in entry and bp is not None and bp.op_type == "DequantizeLinear" and bp.input[0] in inits:
            # int32 bias with scale input x weight scale: the rounding matters in deep nets
            deq_b = inits[bp.input[0]].astype(np.float64) * inits[bp.input[1]].astype(np.float64)
            entry["bias"] = {"dequantized": torch.from_numpy(deq_b.astype(np.float32))}
        elif "weight" in entry and n.op_type == "MatMul":
            # MatMul + Add(bias): ORT quantizes the bias as an activation (uint8, own scale)
            added = _bias_added(proto, n, producer)
            if added is not None and added[1] is not None:
                from edgeopt.quantize.ort_match import dequantize_initializer

                deq_b = dequantize_initializer(added[1], {i.name: i for i in proto.graph.initializer})
                entry["bias"] = {"dequantized": torch.from_numpy(deq_b.reshape(-1))}
        ip = producer.get(n.input[0])
        if ip is not None and ip.op_type == "DequantizeLinear" and ip.input[1] in inits:
            entry["input"] = _dq_qparams(ip, inits)
        elif n.op_type in ("MatMulInteger", "ConvInteger") or "weight" in entry and ip is None:
            entry["input"] = {"dynamic": True}
        if entry:
            out[layer] = entry
    # the logits themselves are requantized when the graph ends in Q -> DQ
    for o in proto.graph.output:
        dq = producer.get(o.name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[1] in inits:
            out[OUTPUT_KEY] = _dq_qparams(dq, inits)
    # dynamic quantization: MatMulInteger / ConvInteger nodes carry the int8 weight directly
    for n in proto.graph.node:
        if n.op_type not in ("MatMulInteger", "ConvInteger") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = n.input[1]
        layer = w[: -len(".weight_quantized")] if w.endswith(".weight_quantized") else None
        if layer is None:
            continue
        q = inits[w].astype(np.float32)
        scale_name = w[: -len("_quantized")] + "_scale"
        zp_name = w[: -len("_quantized")] + "_zero_point"
        scale = inits.get(scale_name, np.float32(1.0)).astype(np.float32)
        zp = inits.get(zp_name, np.float32(0.0)).astype(np.float32)
        if n.op_type == "MatMulInteger":
            # the weight is [in, out] and per-channel scales run along out (the last axis):
            # dequantize by broadcasting, then transpose to nn.Linear's [out, in]
            deq = ((q - zp) * scale).T
        else:
            shape = [-1] + [1] * (q.ndim - 1)
            deq = (q - np.reshape(zp, shape if zp.ndim else ())) * np.reshape(scale, shape if scale.ndim else ())
        out[layer] = {"weight": {"dequantized": torch.from_numpy(np.ascontiguousarray(deq)),
                                 "scale": torch.from_numpy(np.atleast_1d(scale)), "zero_point": 0,
                                 "dtype": "int8", "axis": 0 if scale.ndim == 1 and scale.size > 1 else None},
                      "input": {"dynamic": True}}
    return out


def _float_weight_nodes(path: Path, layers: dict[str, str]) -> list[str]:
    """PyTorch layers whose ONNX node kept a float weight (not quantized by ORT)."""
    import onnx

    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    names = weight_nodes(proto)
    quantized = {names[n.name] for n in proto.graph.node if n.name in names
                 and (producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear")}
    quantized |= {n.input[1][: -len(".weight_quantized")] for n in proto.graph.node
                  if n.op_type in ("MatMulInteger", "ConvInteger") and n.input[1].endswith(".weight_quantized")}
    return [layer for layer in layers.values() if layer not in quantized]


def _layer_nodes(proto: Any, layers: list[str]) -> dict[str, list[str]]:
    """layer -> names of the ONNX nodes computing it: the nodes in the layer's export scope
    (``/up/ConvTranspose``) or reading one of its initializers (``up.weight``)."""
    inits = {i.name for i in proto.graph.initializer}
    out: dict[str, list[str]] = {}
    for layer in layers:
        scope = "/" + layer.replace(".", "/") + "/"
        out[layer] = [n.name for n in proto.graph.node if n.name and (
            n.name.startswith(scope) or any(i in inits and i.startswith(layer + ".") for i in n.input))]
    return out
