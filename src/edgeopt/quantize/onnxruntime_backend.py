"""ONNX Runtime int8: a QDQ ONNX file from ``onnxruntime.quantization``, run by onnxruntime.

Static (the default): batch norm is folded into the convs in PyTorch, the float model is
exported to ONNX (initializers keep the PyTorch parameter names, which is how layer names
map to ONNX nodes), ``quant_pre_process`` runs ONNX Runtime's recommended pre-processing
(symbolic shape inference, graph clean-up), and ``quantize_static`` inserts
QuantizeLinear/DequantizeLinear pairs with ranges calibrated on the training images
(MinMax, Percentile or Entropy: ORT's own calibrators). ONNX Runtime fuses each
DQ -> Conv -> Q pattern into an int8 kernel at session start; that is where the speed-up
comes from (``bench/quantization.py``).

Dynamic: ``quantize_dynamic`` stores int8 weights for MatMul/Gemm/LSTM and quantizes their
inputs per batch at run time (DynamicQuantizeLinear).

QAT: fake-quant fine-tuning of a torchao PT2E graph (``edgeopt.quantize.qat``), converted
to Q/DQ ops in PyTorch and exported with the dynamo exporter, which writes the same QDQ
pattern ONNX Runtime runs in int8.

The fake-quant reference of a static or dynamic artifact is a :class:`QuantSim` of the
folded model whose weights are the file's own int8 weights, dequantized, and whose layer
inputs are fake-quantized with the file's own scales and zero points; for static files
also every other tensor the file requantizes (residual adds, pooled features, logits, the
gates inside Hardswish/SiLU/GELU, a Linear's product before its bias), placed on the
``torch.fx`` graph by value (:mod:`edgeopt.quantize.ort_match`), and every float parameter
the file stores in int8 (LayerNorm weights, layer scales) takes the file's value.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.errors import UnsupportedModelError, brief
from edgeopt.quantize._base import Built, QuantBackend, cpu_has_vnni, reduce_range_for  # noqa: F401 - re-exported
from edgeopt.quantize.config import QuantConfig
from edgeopt.quantize.ort_match import match_activations  # noqa: F401 - re-exported
from edgeopt.spec import get_spec

_CALIB = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
#: ops ORT quantizes statically that carry a weight we map back to a PyTorch layer
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def available() -> str | None:
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        return f"the onnxruntime backend needs onnxruntime: pip install onnxruntime ({exc})"
    return None


def _gemm_to_matmul(proto: Any) -> Any:
    """Rewrite ``Gemm(x, W, b, transB=1)`` as ``MatMul(x, W^T) + b``, weight renamed nowhere.

    ONNX Runtime's dynamic quantization has an int8 kernel for MatMul (MatMulInteger) but
    not for Gemm, which is how both torch exporters write ``nn.Linear``.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    new_nodes = []
    for n in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            new_nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w), n.input[1]))
        mm_out = n.output[0] + "_matmul" if len(n.input) > 2 else n.output[0]
        new_nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [mm_out], name=n.name))
        if len(n.input) > 2:
            new_nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=n.name + "_bias"))
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    onnx.checker.check_model(proto)
    return proto


def _export_float(model: nn.Module, path: Path, samples: torch.Tensor, dynamo: bool = False) -> Path:
    """Export the folded float model to ONNX, checked against PyTorch on ``samples``."""
    from edgeopt.export import export_model

    # The legacy (TorchScript) exporter takes ~1 s where dynamo takes ~35 s on MobileNetV2;
    # the parity check on real images catches anything it gets wrong. Fall back to dynamo.
    try:
        return export_model(model, "onnx", path, {"dynamo": dynamo}, samples=samples[:64]).artifact.path
    except Exception:
        if dynamo:
            raise
        return export_model(model, "onnx", path, {"dynamo": True}, samples=samples[:64]).artifact.path


class _Reader:
    """The CalibrationDataReader ORT pulls batches from."""

    def __init__(self, input_name: str, images: torch.Tensor, batch: int = 32) -> None:
        self._batches = [{input_name: images[i:i + batch].numpy().astype(np.float32)}
                         for i in range(0, len(images), batch)]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


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


def _pre_process(fp32: Path, pre: Path, warnings_: list[str]) -> None:
    """ORT's quantization pre-processing, with its symbolic shape inference when it works.

    ORT's symbolic shape inference asserts on some graphs (e.g. a torchvision
    VisionTransformer's Reshape of a computed shape: ``assert is_literal(shape_rank)``); it only
    sharpens shapes, so the pre-processing is redone without it and a warning says so.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_ort():
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        return
    except Exception as exc:  # noqa: BLE001 - ORT raises AssertionError/Exception here
        reason = f"{type(exc).__name__}: {brief(exc, 120)}".rstrip(": ")
    try:
        with _quiet_ort():
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"ONNX Runtime cannot pre-process this model for quantization ({reason}; without symbolic "
            f"shapes: {type(exc).__name__}: {brief(exc, 120)}); try --backend torch or litert"
        ) from None
    warnings_.append(f"ONNX Runtime's symbolic shape inference failed on this graph ({reason}); "
                     f"quantized with ONNX's own shape inference instead")


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


@contextlib.contextmanager
def _quiet_ort():
    import logging
    import os

    log = logging.getLogger()
    old = log.level
    log.setLevel(logging.ERROR)  # ORT's quantizer logs every skipped node at INFO/WARNING
    try:
        # ORT's calibrators print() their progress on stdout ("Collecting tensor data ...")
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        log.setLevel(old)


#: histogram bins of ORT's entropy calibrator: 2048 bins searched with 128 quantized bins
#: (TensorRT's recipe). quantize_static does not forward these, and its default of 128
#: bins leaves exactly one candidate threshold: the min/max range.
ENTROPY_BINS = 2048


@contextlib.contextmanager
def _entropy_bins(cfg: QuantConfig):
    """Give ORT's entropy calibrator a real histogram to search (see ENTROPY_BINS).

    quantize_static builds its calibrator through ``create_calibrator`` and forwards only a
    few extra options; this wraps that one function for the duration of the call so the
    entropy calibrator gets ``num_bins=ENTROPY_BINS``. Without it, "entropy" silently gave
    the same scales as "minmax" (tests/quantize/test_onnxruntime_backend.py checks they
    now differ).
    """
    if cfg.calibration != "entropy":
        yield
        return
    import importlib

    # the package re-exports a *function* called quantize, so import the module by name
    ortq = importlib.import_module("onnxruntime.quantization.quantize")
    original = ortq.create_calibrator

    def create(*args: Any, extra_options: Any = None, **kwargs: Any) -> Any:
        opts = dict(extra_options or {})
        opts.setdefault("num_bins", ENTROPY_BINS)
        opts.setdefault("num_quantized_bins", 128)
        return original(*args, extra_options=opts, **kwargs)

    ortq.create_calibrator = create
    try:
        yield
    finally:
        ortq.create_calibrator = original


def build(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, out: Path,
          keep_float: list[str], data: Any) -> Built:
    from edgeopt._io import atomic_path
    from edgeopt.artifact import Artifact
    from edgeopt.quantize.layers import float_only_layers, fold_batchnorm, quantizable_layers
    from edgeopt.quantize.simulate import QuantSim

    spec = get_spec(model)
    if cfg.method == "qat":
        from edgeopt.quantize.qat import qat_onnx

        return qat_onnx(model, cfg, calibration, out, keep_float, data)

    folded = fold_batchnorm(model)
    # LSTM, ConvTranspose, ...: the fake-quant reference computes them in float, so the
    # artifact must too (ORT would otherwise write int8 ConvTranspose weights the reference
    # never sees); dynamic quantization does cover LSTM (DynamicQuantizeLSTM).
    mods = dict(folded.named_modules())
    float_only = [n for n in float_only_layers(folded)
                  if not (cfg.method == "dynamic" and isinstance(mods[n], nn.LSTM))]
    warnings_: list[str] = [f"layer {n} ({type(mods[n]).__name__}) has no {cfg.method} int8 kernel here and stays float"
                            for n in float_only]
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="edgeopt-ortq-") as tmp:
        fp32 = _export_float(folded, Path(tmp) / "float.onnx", calibration)
        proto = onnx.load(str(fp32))
        nodes = weight_nodes(proto)  # onnx node -> layer
        layer_to_node = {v: k for k, v in nodes.items()}
        missing = [n for n in quantizable_layers(folded) if n not in layer_to_node]
        activations: list[dict[str, Any]] = []
        unmatched: list[str] = []
        if cfg.method == "dynamic":
            exclude = [layer_to_node[n] for n in keep_float if n in layer_to_node]
            mm = Path(tmp) / "matmul.onnx"
            onnx.save(_gemm_to_matmul(proto), str(mm))
            with _quiet_ort(), atomic_path(out) as tmp_out:
                quantize_dynamic(str(mm), str(tmp_out), per_channel=cfg.per_channel,
                                 weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "LSTM"],
                                 nodes_to_exclude=exclude, reduce_range=reduce_range_for(cfg))
        else:
            pre = Path(tmp) / "pre.onnx"
            _pre_process(fp32, pre, warnings_)
            # pre-processing keeps node and initializer names; re-map in case it did not
            nodes = weight_nodes(onnx.load(str(pre))) or nodes
            layer_to_node = {v: k for k, v in nodes.items()}
            exclude = [layer_to_node[n] for n in keep_float if n in layer_to_node]
            exclude += [x for xs in _layer_nodes(onnx.load(str(pre)), float_only).values() for x in xs]
            input_name = proto.graph.input[0].name
            reduce_range = reduce_range_for(cfg)
            extra = {"ActivationSymmetric": cfg.symmetric_activations, "WeightSymmetric": True,
                     "CalibTensorRangeSymmetric": cfg.symmetric_activations,
                     "CalibPercentile": cfg.percentile, "CalibMovingAverage": False}
            with _quiet_ort(), _entropy_bins(cfg), atomic_path(out) as tmp_out:
                quantize_static(
                    str(pre), str(tmp_out), _Reader(input_name, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                    activation_type=QuantType.QInt8 if cfg.symmetric_activations else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, _CALIB[cfg.calibration]),
                    nodes_to_exclude=exclude, extra_options=extra, reduce_range=reduce_range,
                )
            activations, unmatched = match_activations(pre, out, folded, calibration[:16])
    float_layers = _float_weight_nodes(out, {k: v for k, v in nodes.items()})
    unexpected = [n for n in float_layers if n not in keep_float]
    float_layers = [n for n in mods if n in set(float_layers) | set(float_only)]  # model order
    if cfg.method == "static":
        for n in unexpected:
            warnings_.append(f"ONNX Runtime left layer {n} in float (no int8 kernel for its node "
                             f"{layer_to_node.get(n, '?')})")
        if missing:  # one line, not one per layer: a transformer has dozens
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            warnings_.append(f"{len(missing)} layer(s) have no matching ONNX node, so their int8 ranges were "
                             f"not checked: {shown}")
    qdq = read_qdq_qparams(out)
    if reduce_range_for(cfg):
        for entry in qdq.values():  # 7-bit symmetric weights: ORT stores them in [-64, 64]
            if "weight" in entry:
                entry["weight"].update(qmin=-64, qmax=64)
    if not qdq:
        out.unlink(missing_ok=True)
        what = "Linear/LSTM" if cfg.method == "dynamic" else "Conv/Linear"
        raise UnsupportedModelError(
            f"ONNX Runtime quantized no {what} layer of this model ({cfg.method}); nothing would be int8"
        )
    output_q = qdq.pop(OUTPUT_KEY, None)
    from edgeopt.quantize.ort_match import quantized_parameters, simulated_tensors

    layer_q = {k: v for k, v in qdq.items() if k in dict(folded.named_modules())}
    # LayerNorm weights, layer scales, ...: float parameters the file stores in int8
    params = (quantized_parameters(out, folded, skip={f"{k}.{p}" for k in layer_q for p in ("weight", "bias")})
              if cfg.method == "static" else {})
    reference = QuantSim(folded, layer_q, output=output_q, activations=activations, params=params)
    precision = "int8" if not float_layers else "mixed"
    meta = {"exporter": "onnxruntime.quantization", "quant_format": "QDQ" if cfg.method != "dynamic" else "dynamic",
            "onnxruntime_version": _ort_version(), "quantized_layers": len(qdq),
            "reference_requantizes": {"tensors": simulated_tensors(activations), "not_simulated": unmatched,
                                      "parameters": sorted(params)},
            "reduce_range": reduce_range_for(cfg),
            "source": {"arch": getattr(model, "edgeopt_arch", None), "class": type(model).__name__},
            "lineage": list(getattr(model, "edgeopt_lineage", None) or []) + [
                {"step": "quantize", "method": cfg.method, "backend": "onnxruntime"}]}
    artifact = Artifact(out, "onnx", spec, precision, meta)
    artifact.save_sidecar()
    built_meta = {"quantized_layers": len(qdq), "reduce_range": reduce_range_for(cfg),
                  "reference_requantizes": meta["reference_requantizes"]}
    if cfg.method != "dynamic" and data is not None:
        built_meta["qdq_graph_agreement"] = qdq_graph_agreement(out, data, cfg)
    return Built(artifact, reference, float_layers=float_layers, warnings=warnings_, qparams=qdq, meta=built_meta)


def qdq_graph_agreement(path: Path, data: Any, cfg: QuantConfig) -> dict[str, Any]:
    """Top-1 agreement of a QDQ file run as ONNX Runtime deploys it (int8 kernels) with the
    same file's QDQ graph run op by op (optimizations off: float ops between explicit
    quantize/dequantize pairs), on the held-out images the reference is checked on.

    High agreement here and low agreement with the PyTorch reference says where the gap is:
    in the reference, which does not model some of the file's quantization, not in the file.
    """
    import onnxruntime as ort

    split = "val" if len(data.split("val")) else "test"
    x, _ = data.samples(cfg.verify_samples, split=split, seed=cfg.seed + 1)
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        outs.append(np.concatenate([sess.run(None, {name: x[i:i + 64].numpy()})[0] for i in range(0, len(x), 64)]))
    graph, kernels = outs
    return {"samples": len(x), "top1_agreement": float((graph.argmax(1) == kernels.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(graph - kernels).max())}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


BACKEND = QuantBackend("onnxruntime", ("static", "dynamic", "qat"), ".onnx", build, available)
