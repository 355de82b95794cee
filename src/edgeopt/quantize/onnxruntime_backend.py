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
from edgeopt.quantize.ort_qdq_file import (  # noqa: F401 - OUTPUT_KEY, weight_nodes re-exported
    OUTPUT_KEY,
    _float_weight_nodes,
    _layer_nodes,
    read_qdq_qparams,
    weight_nodes,
)
from edgeopt.spec import get_spec

_CALIB = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
#: ops ORT quantizes statically that carry a weight we map back to a PyTorch layer


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
