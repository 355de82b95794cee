"""LiteRT int8: a full-integer ``.tflite`` from litert-torch's PT2E quantizer.

The model is captured with ``torch.export``, annotated with litert-torch's
``PT2EQuantizer`` (int8 symmetric activations, int8 weights per channel or per tensor;
``is_dynamic`` for dynamic quantization, ``is_qat`` for QAT), calibrated on the training
images and converted with ``convert_pt2e(fold_quantize=False)``. That Q/DQ graph *is* the
fake-quant PyTorch reference: the converter lowers exactly it to TFLite int8 kernels, so
the reference and the file share every scale and zero point.

What litert-torch does not offer, said plainly instead of approximated: activation ranges
come from its own HistogramObserver (``calibration="minmax"``, the default, stands for it;
``percentile``/``entropy`` are onnxruntime-backend options), activations are always
symmetric int8, and its quantizer cannot leave single layers float (``keep_float`` and
``max_drop`` are refused with that reason). The file has a fixed batch size of 1.

Where the file's kernels compute what the graph does not say, the reference is made to
compute it too (average pools on the file's grid, biases on the int32 grid, global means
rounded as XNNPACK rounds them: :mod:`edgeopt.quantize.litert_means`). What remains is
located, when the agreement is below the floor, by
:class:`~edgeopt.quantize.litert_divergence.DivergenceLocator` (``meta["divergence"]``): the
first file op that departs from the reference beyond rounding, or the evidence that none
does and the model amplifies rounding noise.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError, EdgeoptError, UnsupportedModelError, brief
from edgeopt.quantize._base import Built, QuantBackend
from edgeopt.quantize.config import QuantConfig
from edgeopt.spec import get_spec


def available() -> str | None:
    from edgeopt.export.tflite_export import tflite_available

    return tflite_available()


def _quantizer(cfg: QuantConfig) -> Any:
    from litert_torch.quantize import pt2e_quantizer as pq

    qconf = pq.get_symmetric_quantization_config(
        is_per_channel=cfg.per_channel, is_qat=cfg.method == "qat", is_dynamic=cfg.method == "dynamic")
    return pq.PT2EQuantizer().set_global(qconf)


def build(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, out: Path,
          keep_float: list[str], data: Any) -> Built:
    from torchao.quantization.pt2e import quantize_pt2e

    from edgeopt._io import write_with_atomic
    from edgeopt.artifact import Artifact
    from edgeopt.export import tflite_export as tfx
    from edgeopt.quantize.layers import quantizable_layers
    from edgeopt.quantize.litert_divergence import DivergenceLocator
    from edgeopt.quantize.litert_means import means_rounded_like_the_file

    if keep_float:
        raise ConfigError("the litert backend cannot keep single layers float (litert-torch's quantizer has "
                          "no per-layer opt-out); use --backend onnxruntime for keep_float / max_drop")
    if cfg.calibration != "minmax":
        raise ConfigError(f"the litert backend calibrates with litert-torch's histogram observer; "
                          f"calibration='{cfg.calibration}' is an onnxruntime-backend option")
    spec = get_spec(model)
    litert_torch = tfx._litert_torch()
    example = spec.example_input(1)
    quantizer = _quantizer(cfg)
    t0 = time.perf_counter()
    qat_info = None
    try:
        with tfx._converter_quiet():
            if cfg.method == "qat":
                from edgeopt.quantize.qat import finetune, prepare_pt2e_qat

                with _patterns_as_modules():
                    prepared = prepare_pt2e_qat(model, quantizer, calibration[:2].clone(), graph_pass=strip_dropout)
                with torch.no_grad():
                    for i in range(0, len(calibration), 64):
                        prepared(calibration[i:i + 64])
                qat_info = finetune(prepared, cfg, data, out, exported=True)
                quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
            else:
                graph = strip_dropout(torch.export.export(copy.deepcopy(model).eval(), (example,)).module())
                prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
                with torch.no_grad():
                    for b in calibration.split(1):  # the captured graph has batch 1
                        prepared(b)
                quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
            round_biases_to_int32(quantized)
            from litert_torch.quantize.quant_config import QuantConfig as LiteRTQuantConfig

            content = bytes(litert_torch.convert(quantized, (example,),
                                                 quant_config=LiteRTQuantConfig(pt2e_quantizer=quantizer)).model_content())
    except EdgeoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - a converter failure is one line naming the model
        msg = brief(exc)
        raise UnsupportedModelError(
            f"litert-torch cannot quantize {type(model).__name__} ({cfg.method}): {type(exc).__name__}: {msg}"
        ) from None
    inp, outp = tfx.io_details(content)
    pools = pools_on_the_files_grid(quantized, content, calibration[:16])
    means = means_rounded_like_the_file(quantized, content)
    # run by quantize() only when the agreement is below the floor: names the op that departs
    locator = DivergenceLocator(quantized, content, calibration[:32])
    write_with_atomic(out, lambda p: p.write_bytes(content))
    meta: dict[str, Any] = {
        "precision": "int8", "exporter": "litert-torch PT2EQuantizer", "batch_size": 1, "layout": "NCHW",
        "input": inp, "output": outp, "export_seconds": round(time.perf_counter() - t0, 2),
        "activations": "int8 symmetric (litert-torch)",
        "source": {"arch": getattr(model, "edgeopt_arch", None), "class": type(model).__name__},
        "lineage": list(getattr(model, "edgeopt_lineage", None) or []) + [
            {"step": "quantize", "method": cfg.method, "backend": "litert"}],
    }
    if inp["dtype"] == "int8":
        meta["input_quantization"] = {"dtype": inp["dtype"], "scale": inp["scale"], "zero_point": inp["zero_point"]}
        meta["output_quantization"] = {"dtype": outp["dtype"], "scale": outp["scale"], "zero_point": outp["zero_point"]}
    from edgeopt.quantize.qat import allow_train_eval

    allow_train_eval(quantized)
    if cfg.method != "qat":  # captured with batch 1 (QAT's graph has a dynamic batch)
        quantized = _Batch1(quantized)
    art = Artifact(out, "tflite", spec, "int8", meta)
    art.save_sidecar()
    for attr in ("edgeopt_spec", "edgeopt_arch"):
        if hasattr(model, attr):
            setattr(quantized, attr, getattr(model, attr))
    float_layers = [] if cfg.method != "dynamic" else [
        n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)) and n in quantizable_layers(model)]
    extra = {"qat": {k: v for k, v in qat_info.items()}} if qat_info else {}
    extra["reference_pools"] = pools["pools"]
    extra["reference_means"] = [m["node"] for m in means]
    extra["divergence"] = locator
    if pools.get("note"):
        extra["reference_notes"] = [pools["note"]]
    return Built(art, quantized, float_layers=float_layers, warnings=pools["warnings"],
                 meta={"quantizer": "litert-torch PT2EQuantizer", **extra})


@contextlib.contextmanager
def _patterns_as_modules() -> Iterator[None]:
    """Let litert-torch's QAT conv-bn annotator run on torch >= 2.9.

    litert-torch 0.10 hands torchao's ``_get_aten_graph_module_for_pattern`` a bare
    function, which ``torch.export`` now refuses ("Expected `mod` to be an instance of
    `torch.nn.Module`"), so ``method="qat"`` failed before any training; torchao's own
    annotators wrap their patterns in its ``WrapperModule``. This wraps litert-torch's the
    same way while the quantizer annotates, and restores the function afterwards.
    """
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    original = utils._get_aten_graph_module_for_pattern

    def wrapped(pattern: Any, *args: Any, **kwargs: Any) -> Any:
        return original(pattern if isinstance(pattern, nn.Module) else WrapperModule(pattern), *args, **kwargs)

    utils._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def round_biases_to_int32(graph: Any) -> Any:
    """Put every conv/linear bias of a converted Q/DQ graph on its int32 grid (in place).

    Why: TFLite stores each bias as int32 with scale input scale x weight scale and adds it
    to the int32 accumulator, while the Q/DQ graph adds the float bias; the difference,
    under half a step of that tiny scale, flips a few activations by one step in the first
    layers and grows through a deep net (MobileNetV2: the reference's logits a mean 0.052
    from the file's). Rounding the reference's biases the same way changes nothing in the
    file (the converter quantizes an already-rounded bias to the same integers).
    """
    qd = torch.ops.quantized_decomposed
    layers = {torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}

    def attr(node: Any) -> Any:
        obj = graph
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj

    for n in graph.graph.nodes:
        if n.op != "call_function" or n.target not in layers or len(n.args) < 3:
            continue
        x, w, b = n.args[:3]
        if not (isinstance(b, torch.fx.Node) and b.op == "get_attr" and isinstance(x, torch.fx.Node)
                and isinstance(w, torch.fx.Node) and x.target == qd.dequantize_per_tensor.default
                and w.target in (qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default)
                and isinstance(x.args[1], float)):
            continue
        w_scale = attr(w.args[1]) if isinstance(w.args[1], torch.fx.Node) else torch.tensor(float(w.args[1]))
        bias = attr(b)
        scale = (x.args[1] * w_scale.double()).reshape(-1)
        with torch.no_grad():
            bias.copy_((torch.round(bias.double() / scale) * scale).to(bias.dtype))
    return graph


#: graph pooling ops -> the TFLite int8 ops the converter lowers them to
_POOL_TARGETS = ("avg_pool2d.default", "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default",
                 "mean.dim", "mean.default")
_FILE_POOL_OPS = ("AVERAGE_POOL_2D", "MEAN")


def file_pool_qparams(content: bytes) -> list[dict[str, Any]]:
    """The int8 pooling ops of a ``.tflite`` in execution order, with their input and output
    scale and zero point (``[{"op", "input": (scale, zp), "output": (scale, zp)}]``)."""
    import numpy as np

    from edgeopt.quantize.litert_file import file_graph

    tensors, ops = file_graph(content)
    found = []
    for op in ops:
        if op["op_name"] not in _FILE_POOL_OPS:
            continue
        i, o = tensors[op["inputs"][0]], tensors[op["outputs"][0]]
        if i["dtype"] != np.int8 or o["dtype"] != np.int8:
            continue
        found.append({"op": op["op_name"],
                      "input": (float(i["quantization"][0]), int(i["quantization"][1])),
                      "output": (float(o["quantization"][0]), int(o["quantization"][1]))})
    return found


def _fake_quant(graph: Any, node: Any, scale: float, zero_point: int) -> Any:
    """Insert ``dequantize(quantize(node))`` (int8, the file's scale) after ``node``; returns the dq node."""
    qd = torch.ops.quantized_decomposed
    with graph.graph.inserting_after(node):
        q = graph.graph.call_function(qd.quantize_per_tensor.default, (node, scale, zero_point, -128, 127, torch.int8))
    with graph.graph.inserting_after(q):
        return graph.graph.call_function(qd.dequantize_per_tensor.default, (q, scale, zero_point, -128, 127, torch.int8))


def pools_on_the_files_grid(graph: Any, content: bytes, calibration: torch.Tensor) -> dict[str, Any]:
    """Make the reference's average pools read and write the file's int8 grid (in place).

    Why: TFLite's int8 AVERAGE_POOL_2D (and litert's MEAN) has one scale and zero point
    for its input and output. litert-torch's quantizer annotates ``AdaptiveAvgPool2d`` but
    not ``F.avg_pool2d``; for an unannotated pool the converter gives the pool's input the
    *pooled output's* range. In a ResNet whose last residual add runs in float (CIFAR
    "option A" ResNet-20), the last block's output (float max ~21) was quantized to the
    pooled range ([0, 4.5]) in the file while the Q/DQ reference pooled the float values:
    agreement 95.9 % on 220 held-out images. Where the pool's input was already int8
    (``F.avg_pool2d`` after a quantized block), the file rounds the pooled values on the
    input's grid before requantizing them; the reference did not (agreement 91.4 %). Here
    each pool of the reference gets the file's input and output quantization (matched in
    execution order, checked by count), so the reference computes what the file computes
    (both cases: 99.1-99.5 %). When the file clips a pool's input that the graph had not
    quantized there, a warning says how much (on ``calibration``), since that loss is the
    file's, not the reference's.

    Returns:
        ``{"pools": [{"node", "op", "input", "output", "clipped"}], "warnings": [...]}`` and, when the
        graph and the file count their pools differently, ``"note"`` (a clause for the agreement warning);
        ``pools`` is empty (and the reference unchanged) when the graph and the file do not
        have the same number of pools.
    """
    qd = torch.ops.quantized_decomposed
    nodes = [n for n in graph.graph.nodes if n.op == "call_function"
             and getattr(n.target, "__name__", "") in _POOL_TARGETS and getattr(n.target, "namespace", "") == "aten"]
    file_pools = file_pool_qparams(content)
    if not nodes or len(nodes) != len(file_pools):
        # not a warning of its own: most extra pools are 1x1 maps the converter deletes or means
        # it runs in float; the agreement warning (below the floor only) carries it as a clause
        note = None if not nodes and not file_pools else (
            f"the reference has {len(nodes)} average pool(s) and the int8 file {len(file_pools)}, so the "
            f"reference keeps its own pooling ranges")
        return {"pools": [], "warnings": [], "note": note}
    placed, watch = [], {}
    for n, fp in zip(nodes, file_pools):
        x = n.args[0]
        (s_in, zp_in), (s_out, zp_out) = fp["input"], fp["output"]
        already = (isinstance(x, torch.fx.Node) and x.target == qd.dequantize_per_tensor.default
                   and isinstance(x.args[1], float) and abs(x.args[1] - s_in) <= 1e-6 * s_in and x.args[2] == zp_in)
        if not already:  # the file requantizes the pool's input: so does the reference
            dq_in = _fake_quant(graph, x, s_in, zp_in)
            n.replace_input_with(x, dq_in)
            watch[n.name] = (x, s_in, zp_in)
        users = list(n.users)
        dq_out = _fake_quant(graph, n, s_out, zp_out)  # the file rounds the pooled values on its grid
        for u in users:
            u.replace_input_with(n, dq_out)
        placed.append({"node": n.name, "op": fp["op"], "input": [s_in, zp_in], "output": [s_out, zp_out],
                       "clipped": None})
    graph.graph.lint()
    graph.recompile()
    warnings = []
    if watch and len(calibration):
        seen: dict[str, list[torch.Tensor]] = {name: [] for name in watch}
        targets = {x.name: name for name, (x, _, _) in watch.items()}

        class _Watch(torch.fx.Interpreter):
            def run_node(self, node: Any) -> Any:
                out = super().run_node(node)
                if node.name in targets:
                    seen[targets[node.name]].append(out.detach().float().flatten())
                return out

        with torch.no_grad():
            for b in calibration.split(1):
                _Watch(graph).run(b)
        for p in placed:
            if p["node"] not in watch:
                continue
            _, s, zp = watch[p["node"]]
            v = torch.cat(seen[p["node"]])
            lo, hi = (-128 - zp) * s, (127 - zp) * s
            frac = float(((v < lo - s / 2) | (v > hi + s / 2)).double().mean())
            p["clipped"] = frac
            if frac > 1e-3:
                warnings.append(
                    f"the int8 file quantizes the input of {p['node']} ({p['op']}) to the pooled output's range "
                    f"[{lo:.3g}, {hi:.3g}] (a TFLite int8 pool has one scale for input and output): "
                    f"{100 * frac:.1f} % of its values on {len(calibration)} calibration images lie outside "
                    f"(float range [{float(v.min()):.3g}, {float(v.max()):.3g}]) and are clipped; the reference "
                    f"reproduces it, the accuracy measured on the file includes it (use AdaptiveAvgPool2d, which "
                    f"litert-torch quantizes with the input's range, or --backend onnxruntime)")
    return {"pools": placed, "warnings": warnings}


_DROPOUT_OPS = ("dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout", "alpha_dropout_")


def strip_dropout(graph: Any) -> Any:
    """Remove dropout nodes from an exported graph module (in place; returns it).

    Why: litert-torch's quantizer gives a dropout's output its own observer, whose
    histogram range differs from the dropout's input, but the converter deletes the
    dropout (identity at inference) together with that requantization while keeping the
    next layer's int32 bias quantized with the deleted scale. On simple_cnn that put the
    classifier's bias off by the ratio of the two scales (2.9x) and the logits a median 3
    output steps away from the Q/DQ reference (98.6 % top-1 agreement). Without dropout in
    the graph there is one scale for the tensor, shared by the reference and the file. QAT
    therefore fine-tunes without dropout on this backend.
    """
    doomed = [n for n in graph.graph.nodes if n.op == "call_function"
              and getattr(n.target, "__name__", "").split(".")[0] in _DROPOUT_OPS
              and str(getattr(n.target, "namespace", "")) == "aten"]
    for node in doomed:
        node.replace_all_uses_with(node.args[0])
        graph.graph.erase_node(node)
    if doomed:
        graph.graph.lint()
        graph.recompile()
    return graph


class _Batch1(nn.Module):
    """Runs a graph captured with batch 1 (as the converter wants it) on any batch, one image
    at a time, so the fake-quant reference takes the batches the agreement check feeds it."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.graph(b) for b in x.split(1)])


BACKEND = QuantBackend("litert", ("static", "dynamic", "qat"), ".tflite", build, available)
