"""torchao PT2E int8 for x86 (torch backend, engine ``pt2e-x86``): a ``.pt2`` torch.export file.

``torch.export`` captures the model (batch dimension dynamic), ``prepare_pt2e`` with
torchao's ``X86InductorQuantizer`` folds batch norm and inserts observers, calibration
images run through it, and ``convert_pt2e`` replaces the observers by
quantize/dequantize ops (int8 weights stored, ``fold_quantize``). That converted graph *is*
the fake-quant reference: the artifact is the same graph exported again and written with
``torch.export.save``. Its speed comes from inductor: the ``torch_export`` runner compiles
it with freezing on, and torchao's X86 passes turn each dequantize -> conv -> quantize
pattern into one oneDNN int8 conv. Uncompiled it runs the float fake-quant graph (slow).

Calibration methods map to observers as in :mod:`edgeopt.quantize.torch_backend`
(activations uint8 over ``[0, 255]``: X86 Inductor's default; ``[0, 127]`` with
``QuantConfig.reduce_range``, which is on by default on CPUs without VNNI).
Weights are int8 per channel only: the X86 lowering matches ``dequantize_per_channel``
weights, so ``per_channel=False`` is refused. ``method="dynamic"`` uses the quantizer's
dynamic config: int8 weights for the convs and linears too, their input ranges chosen per
batch at run time (``choose_qparams``), no calibration.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError, MissingDependencyError, UnsupportedModelError
from edgeopt.quantize._base import Built
from edgeopt.quantize.config import QuantConfig
from edgeopt.spec import get_spec

#: extra file of the .pt2 archive holding the ModelSpec JSON
SPEC_EXTRA_FILE = "edgeopt_spec.json"
_MAX_BATCH = 1 << 16


def _require() -> None:
    try:
        import torchao.quantization.pt2e.quantize_pt2e
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"engine 'pt2e-x86' needs torchao: pip install torchao ({exc})") from None


def quantization_config(cfg: QuantConfig) -> Any:
    """X86 Inductor's default config adjusted for ``cfg`` (observer, symmetric activations).

    Example:
        >>> q = quantization_config(QuantConfig(backend="torch", engine="pt2e-x86", symmetric_activations=True))
        >>> q.input_activation.qscheme, q.weight.qscheme
        (torch.per_tensor_symmetric, torch.per_channel_symmetric)
    """
    from torchao.quantization.pt2e import observer as ob
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from edgeopt.quantize._base import reduce_range_for
    from edgeopt.quantize._torch_common import activation_observer

    qat, dynamic = cfg.method == "qat", cfg.method == "dynamic"
    # 7-bit activations where oneDNN's u8 x s8 kernels saturate (no VNNI), as for ONNX Runtime:
    # with 8-bit ones MobileNetV2-CIFAR's compiled file agreed with its graph on 92.8 % only
    rr = reduce_range_for(cfg)
    base = xiq.get_default_x86_inductor_quantization_config(is_qat=qat, is_dynamic=dynamic, reduce_range=rr)
    if qat or dynamic:
        return base
    act = dataclasses.replace(
        base.input_activation, observer_or_fake_quant_ctr=activation_observer(cfg, ob.MinMaxObserver, 127 if rr else 255),
        qscheme=torch.per_tensor_symmetric if cfg.symmetric_activations else torch.per_tensor_affine)
    return dataclasses.replace(base, input_activation=act, output_activation=act)


def _export(model: nn.Module, example: torch.Tensor, what: str) -> Any:
    from edgeopt.quantize._torch_common import untraceable

    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    # A failed capture logs a warning and prints the partial graph to stderr; the one-line
    # error below names the layer and line instead. On success the captured stderr is replayed.
    log = logging.getLogger("torch")
    level = log.level
    log.setLevel(logging.ERROR)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        sys.stderr.write(err.getvalue())
        return ep
    except Exception as exc:  # noqa: BLE001 - every export failure becomes one line naming the layer
        raise untraceable(exc, model, f"torch.export ({what})",
                          "PT2E needs a forward() torch.export can capture with a dynamic batch: make "
                          "tensor-value branches tensor-free, or use engine='x86' or backend='onnxruntime'"
                          ) from None
    finally:
        log.setLevel(level)


def _strip_unused(gm: Any) -> None:
    """Drop parameters/buffers no graph node reads (convert_pt2e keeps the float weights)."""
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]
    gm.recompile()


def _fetch(gm: Any, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        obj = gm
        for part in arg.target.split("."):
            obj = getattr(obj, part)
        return obj
    return arg


def _layer_of(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self__.", "") or None


def _report(model: nn.Module, gm: Any, keep_float: list[str]
            ) -> tuple[list[str], list[str], list[str], dict[str, Any]]:
    """(int8 layers, float layers, warnings, qparams) of a converted PT2E graph."""
    from edgeopt.quantize.layers import float_only_layers, quantizable_layers

    qd = torch.ops.quantized_decomposed
    convs = {torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    int8: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in convs or len(node.args) < 2:
            continue
        layer, w = _layer_of(node), node.args[1]
        if layer is None or not isinstance(w, torch.fx.Node) or w.target != qd.dequantize_per_channel.default:
            continue
        q, scale, zp, axis = (_fetch(gm, a) for a in w.args[:4])
        shape = [1] * q.dim()
        shape[axis] = -1
        entry: dict[str, Any] = {"weight": {
            "dequantized": (q.float() - zp.reshape(shape).float()) * scale.reshape(shape).float(),
            "scale": scale.float(), "zero_point": 0, "dtype": "int8", "axis": int(axis)}}
        x = node.args[0]
        if isinstance(x, torch.fx.Node) and x.target == qd.dequantize_per_tensor.default:
            s, z = (_fetch(gm, a) for a in x.args[1:3])
            entry["input"] = {"scale": float(s), "zero_point": int(z), "dtype": "uint8"}
        elif isinstance(x, torch.fx.Node) and "tensor" in str(x.target):
            entry["input"] = {"dynamic": True, "dtype": "uint8"}
        int8[layer] = entry
    floats, warns = [], []
    orig = dict(model.named_modules())
    for name in quantizable_layers(model) + float_only_layers(model):
        if name in int8:
            continue
        floats.append(name)
        if name not in keep_float:
            warns.append(f"layer {name} ({type(orig[name]).__name__}) was not quantized by torchao's "
                         f"X86InductorQuantizer and stays float")
    return list(int8), floats, warns, int8


def _save(ep: Any, spec: Any, out: Path) -> None:
    from edgeopt._io import write_bytes_atomic

    for node in ep.graph.nodes:  # build-machine source paths and pass history: not for shipping
        node.meta.pop("stack_trace", None)
        node.meta.pop("from_node", None)
    buf = io.BytesIO()
    torch.export.save(ep, buf, extra_files={SPEC_EXTRA_FILE: json.dumps(spec.to_dict())})
    write_bytes_atomic(out, buf.getvalue())


def build_pt2e(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, out: Path,
               keep_float: list[str], data: Any) -> Built:
    """The pt2e-x86 build; arguments as :func:`edgeopt.quantize.torch_backend.build`."""
    from edgeopt.artifact import Artifact
    from edgeopt.quantize._torch_common import calibrate, qat_finetune, quiet

    if not cfg.per_channel:
        raise ConfigError("engine 'pt2e-x86' quantizes weights per channel only (X86 Inductor's int8 kernels "
                          "take no per-tensor weights); use per_channel=True or engine='x86'")
    _require()
    from torchao.quantization import pt2e
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    spec = get_spec(model)
    qat = cfg.method == "qat"
    quantizer = X86InductorQuantizer().set_global(quantization_config(cfg))
    for name in keep_float:
        quantizer.set_module_name_qconfig(name, None)
    example = calibration[:2].clone()  # clone: torch.export.save stores the example's whole storage
    with quiet():
        src = copy.deepcopy(model).train(qat)
        captured = _export(src, example, "capture").module()
        qat_info = None
        if qat:
            prepared = prepare_qat_pt2e(captured, quantizer)
            qat_info = qat_finetune(prepared, model, cfg, calibration, data, out, exported=True)
        else:
            prepared = prepare_pt2e(captured, quantizer)
            calibrate(prepared, calibration)
        converted = convert_pt2e(prepared)
        _strip_unused(converted)
    int8, floats, warns, qparams = _report(model, converted, keep_float)
    if not int8:
        raise UnsupportedModelError(
            f"torchao's X86InductorQuantizer quantized no Conv/Linear layer of this model ({cfg.method}); "
            f"nothing would be int8")
    precision = "mixed" if floats else "int8"
    with quiet():
        _save(_export(converted, example, "int8 graph"), spec, out)
    pt2e.allow_exported_model_train_eval(converted)  # callers may .eval() the reference
    for attr in ("edgeopt_spec", "edgeopt_arch"):
        if hasattr(model, attr):
            setattr(converted, attr, getattr(model, attr))
    meta = {"exporter": "torchao.quantization.pt2e (X86InductorQuantizer) + torch.export",
            "quantized_engine": cfg.engine, "quantized_layers": len(int8),
            "versions": {"torch": str(torch.__version__), "torchao": _torchao_version()},
            "source": {"arch": getattr(model, "edgeopt_arch", None), "class": type(model).__name__},
            "lineage": list(getattr(model, "edgeopt_lineage", None) or []) + [
                {"step": "quantize", "method": cfg.method, "backend": "torch", "engine": cfg.engine}]}
    artifact = Artifact(out, "torch_export", spec, precision, meta)
    artifact.save_sidecar()
    return Built(artifact, converted, float_layers=floats, warnings=warns, qparams=qparams,
                 meta={"quantized_layers": len(int8), "quantized_engine": cfg.engine,
                       **({"qat": qat_info} if qat_info else {})})


def _torchao_version() -> str:
    import torchao

    return str(getattr(torchao, "__version__", "?"))
