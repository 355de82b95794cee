"""PyTorch int8: torch.ao FX graph mode (TorchScript file) or torchao PT2E (torch.export file).

**Engines x86 / fbgemm / qnnpack: torch.ao FX graph mode.** ``prepare_fx`` traces the
model with ``torch.fx``, fuses Conv+BN+ReLU and inserts observers; calibration images run
through it; ``convert_fx`` swaps in the engine's int8 modules. FX is used rather than
eager-mode quantization because eager mode needs the model's code edited (QuantStub /
DeQuantStub around the int8 region, ``FloatFunctional`` for every ``+`` and ``cat``,
explicit fusion lists); FX needs none of that, at the price of a traceable ``forward``.
The int8 model is traced and frozen to a ``.torchscript`` file (the format LibTorch C++
deployments load), whose sidecar records ``quantized_engine``: the ``torchscript`` runner
sets ``torch.backends.quantized.engine`` to it, because int8 weights are packed for one
engine when the file is loaded. The fake-quant reference is ``convert_to_reference_fx`` of
a copy of the same calibrated model: float ops between quantize/dequantize pairs with the
very scales of the int8 model, except that on x86/fbgemm its global average pools and
two-tensor ``mul`` round as the int8 kernels do (squeeze-excitation blocks: the float ops
rounded ties otherwise, and MobileNetV3 agreed only 69.9 % with its int8 model; see
:mod:`edgeopt.quantize.int8_rounding`). Below 99 % agreement on calibration images the warning
names the node where the two part, why, and whether keeping its layers float helps
(measured by quantizing again), and ``reference_divergence`` records them.

What each calibration method maps to (activations; weights are always min/max):

* ``minmax``: ``MinMaxObserver``, the observed extremes.
* ``percentile``: an observer that keeps an :class:`edgeopt.quantize.math.Histogram` and
  clips at :func:`~edgeopt.quantize.math.percentile_range` (torch.ao has no percentile
  observer; its ``HistogramObserver`` minimises the L2 error instead).
* ``entropy``: the same observer with :func:`~edgeopt.quantize.math.entropy_range`, the
  KL-divergence search ONNX Runtime and TensorRT call entropy calibration. So a method
  name means the same range on every backend.

Activations are uint8 with ``quant_max=127`` on x86/fbgemm (``reduce_range``: without
VNNI the uint8 x int8 products are summed with 16-bit saturating instructions, which can
overflow; PyTorch's default) and 255 on qnnpack; ``QuantConfig.reduce_range`` True/False
overrides that (in torch.ao the 7 bits go to the activations, not the weights). ``symmetric_activations`` keeps uint8 (the only activation type the engines'
int8 convs take) with the symmetric scheme: zero point 128. ``per_channel=False`` gives
one weight scale per tensor. Dynamic quantization (``quantize_dynamic``) covers
Linear/LSTM/GRU; x86/fbgemm kernels quantize each batch to 7 bits (``reduce_range``), and
the reference (:class:`~edgeopt.quantize.simulate.QuantSim`) does the same.

**Engine pt2e-x86: torchao PT2E** with ``X86InductorQuantizer`` (see
:mod:`edgeopt.quantize._torch_pt2e`): a ``.pt2`` file written by ``torch.export.save``,
run by the ``torch_export`` runner after inductor lowering.

Layers that stay float are reported: the ``keep_float`` ones in ``float_layers``, and
weight layers torch.ao cannot quantize (LSTM in static, ...) in ``warnings`` as well.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import MissingDependencyError, UnsupportedModelError, brief
from edgeopt.quantize._base import Built, QuantBackend
from edgeopt.quantize._torch_common import (
    CALIB_BATCH,
    activation_observer,
    activation_qmax,
    calibrate,
    keepdim_means,
    qat_finetune,
    quantized_engine,
    quiet,
    untraceable,
)
from edgeopt.quantize.config import QuantConfig
from edgeopt.quantize.divergence import divergence_warning, keep_float_patterns, locate_divergence
from edgeopt.quantize.int8_rounding import int8_pool_layouts, match_int8_rounding
from edgeopt.spec import get_spec


def _suffix(cfg: QuantConfig) -> str:
    """FX engines write TorchScript; pt2e-x86 a torch.export archive (see _torch_pt2e)."""
    return ".pt2" if cfg.engine == "pt2e-x86" else ".torchscript"


FX_ENGINES = ("x86", "fbgemm", "qnnpack")
#: module types dynamic quantization converts
DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)


def available() -> str | None:
    """None when one of the torch engines can run here, else the reason.

    Example:
        >>> available() is None
        True
    """
    import importlib.util

    if importlib.util.find_spec("torch.ao.quantization.quantize_fx") is not None:
        return None
    if importlib.util.find_spec("torchao") is not None:
        return None
    return (f"the torch backend needs torch.ao.quantization (absent from torch {torch.__version__}) "
            f"or torchao for engine 'pt2e-x86': pip install torchao")


def _require_fx(engine: str) -> None:
    import importlib

    try:  # torch.ao is deprecated upstream; a torch without it is a clear error, not a crash
        importlib.import_module("torch.ao.quantization.quantize_fx")
    except ImportError:
        raise MissingDependencyError(
            f"torch {torch.__version__} no longer ships torch.ao.quantization FX graph mode (engine '{engine}'); "
            f"use engine='pt2e-x86' (torchao) or backend='onnxruntime'"
        ) from None
    engines = torch.backends.quantized.supported_engines
    if engine not in engines:
        raise MissingDependencyError(
            f"this torch build has no '{engine}' quantized engine (it has {', '.join(e for e in engines if e != 'none')}); "
            f"choose one of those"
        )


_FX_HINT = ("FX graph mode needs a forward() without Python control flow on tensor values: make the branch "
            "tensor-free, or use backend='onnxruntime'")


# -- observers and qconfigs -----------------------------------------------------------------------
def _ctor_class(ctor: Any) -> type:
    """The observer class behind a ``with_args`` constructor (or the class itself)."""
    p = getattr(ctor, "p", None)
    cls = getattr(p, "func", ctor)
    return cls if isinstance(cls, type) else type(cls)


def _fx_qconfig_mapping(cfg: QuantConfig, keep_float: list[str], qat: bool) -> Any:
    from torch.ao.quantization import (
        QConfig,
        get_default_qat_qconfig_mapping,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization import fake_quantize as fq
    from torch.ao.quantization import observer as ob

    engine = cfg.engine
    qmax = activation_qmax(cfg)
    if qat:
        mapping = get_default_qat_qconfig_mapping(engine)
        qscheme = torch.per_tensor_symmetric if cfg.symmetric_activations else torch.per_tensor_affine
        act = fq.FusedMovingAvgObsFakeQuantize.with_args(
            observer=ob.MovingAverageMinMaxObserver, quant_min=0, quant_max=qmax, dtype=torch.quint8,
            qscheme=qscheme)
        weight = fq.default_fused_per_channel_wt_fake_quant if cfg.per_channel else fq.default_fused_wt_fake_quant
        tensor_weight = fq.default_fused_wt_fake_quant
    else:
        mapping = get_default_qconfig_mapping(engine)
        act = activation_observer(cfg, ob.MinMaxObserver, qmax)
        tensor_weight = ob.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        weight = (ob.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
                  if cfg.per_channel else tensor_weight)
    qconfig = QConfig(activation=act, weight=weight)
    old_global = mapping.global_qconfig
    mapping.set_global(qconfig)
    # The engine's defaults per op type: ConvTranspose gets per-tensor weights (torch.ao has
    # no per-channel int8 ConvTranspose); LayerNorm/PReLU keep their weight handling but take
    # our activation observer; fixed-qparams ops (sigmoid, tanh, ...) and reshape keep theirs.
    calibrating = (ob.HistogramObserver, ob.MinMaxObserver, fq.FusedMovingAvgObsFakeQuantize)
    for pattern, old in list(mapping.object_type_qconfigs.items()):
        if old is None:
            continue
        if pattern in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) or "transpose" in str(pattern):
            # x86/fbgemm int8 ConvTranspose computes garbage on torch 2.14.1 (SQNR -4 dB against
            # float with PyTorch's own default qconfig; qnnpack: 48 dB): those stay float there
            broken = engine in ("x86", "fbgemm")
            mapping.set_object_type(pattern, None if broken else QConfig(activation=act, weight=tensor_weight))
        elif issubclass(_ctor_class(old.activation), calibrating):
            w = weight if old.weight is old_global.weight else old.weight
            mapping.set_object_type(pattern, QConfig(activation=act, weight=w))
    for name in keep_float:
        mapping.set_module_name(name, None)
    return mapping


# -- FX graph mode ------------------------------------------------------------------------------------
def _is_int8_module(mod: nn.Module) -> bool:
    path = type(mod).__module__
    return ".quantized" in path and ".reference" not in path


def _layer_report(model: nn.Module, converted: nn.Module, keep_float: list[str], engine: str,
                  what: str) -> tuple[list[str], list[str], list[str]]:
    """(int8 layers, float layers, warnings) of a converted torch.ao model."""
    from edgeopt.quantize.layers import float_only_layers, quantizable_layers

    mods = dict(converted.named_modules())
    orig = dict(model.named_modules())
    int8, floats, warns = [], [], []
    for name in quantizable_layers(model) + float_only_layers(model):
        mod = mods.get(name)
        if mod is not None and _is_int8_module(mod):
            int8.append(name)
            continue
        floats.append(name)
        if name in keep_float:
            continue
        kind = type(orig[name]).__name__
        if kind.startswith("ConvTranspose") and engine in ("x86", "fbgemm") and what == "static":
            warns.append(f"layer {name} ({kind}) stays float: torch.ao's {engine} int8 ConvTranspose gives wrong "
                         f"results on this torch (engine qnnpack quantizes it correctly)")
        else:
            warns.append(f"layer {name} ({kind}) has no {what} int8 kernel in torch.ao (engine {engine}) and "
                         f"stays float")
    return int8, floats, warns


def _fx_input_qparams(converted: Any) -> dict[str, dict[str, Any]]:
    """``{layer: {"scale", "zero_point", "dtype"}}``: the int8 input of each quantized module."""
    mods = dict(converted.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for node in converted.graph.nodes:
        if node.op != "call_module" or not _is_int8_module(mods[node.target]) or not node.args:
            continue
        src = node.args[0]
        for _ in range(8):  # walk back through max-pool, flatten, ... to the producer of the qparams
            if not hasattr(src, "op"):
                break
            if src.op == "call_function" and src.target is torch.quantize_per_tensor:
                scale, zp = (getattr(converted, a.target) if hasattr(a, "target") else a for a in src.args[1:3])
                out[node.target] = {"scale": float(scale), "zero_point": int(zp), "dtype": "uint8"}
                break
            if src.op == "call_module" and hasattr(mods[src.target], "zero_point") and _is_int8_module(mods[src.target]):
                m = mods[src.target]
                out[node.target] = {"scale": float(m.scale), "zero_point": int(m.zero_point), "dtype": "uint8"}
                break
            if not src.args:
                break
            src = src.args[0]
    return out


def int8_weight_qparams(mod: nn.Module) -> dict[str, Any] | None:
    """The int8 weight of a torch.ao quantized module, dequantized, with its scales.

    Example:
        >>> w = int8_weight_qparams(torch.ao.nn.quantized.dynamic.Linear(4, 2))
        >>> tuple(w["dequantized"].shape), w["dtype"], w["axis"]
        ((2, 4), 'int8', None)
    """
    w = getattr(mod, "weight", None)
    if not callable(w):
        return None
    q = w()
    if not isinstance(q, torch.Tensor) or not q.is_quantized:
        return None
    per_channel = q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    scale = q.q_per_channel_scales().float() if per_channel else torch.tensor([q.q_scale()])
    return {"dequantized": q.dequantize(), "scale": scale, "zero_point": 0, "dtype": "int8",
            "axis": int(q.q_per_channel_axis()) if per_channel else None}


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        pa = torch.cat([a(x[i:i + CALIB_BATCH]) for i in range(0, len(x), CALIB_BATCH)]).argmax(1)
        pb = torch.cat([b(x[i:i + CALIB_BATCH]) for i in range(0, len(x), CALIB_BATCH)]).argmax(1)
    return float((pa == pb).float().mean())


def _fx_agreement(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, keep_float: list[str]) -> float:
    """Top-1 agreement of reference and int8 model on the calibration images when
    ``keep_float`` stays float (static PTQ; what a suggested --keep-float would give)."""
    from torch.ao.quantization.quantize_fx import convert_fx, convert_to_reference_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(model).eval(), _fx_qconfig_mapping(cfg, keep_float, False),
                          (calibration[:2].clone(),))
    calibrate(prepared, calibration)
    reference = convert_to_reference_fx(copy.deepcopy(prepared))
    int8_model = keepdim_means(convert_fx(prepared))
    if cfg.engine in ("x86", "fbgemm"):
        match_int8_rounding(reference, int8_pool_layouts(int8_model, calibration[:2]))
    return _agreement(reference, int8_model, calibration[:256])


def _explain_divergence(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, keep_float: list[str],
                        reference: nn.Module, int8_model: nn.Module, agree: float) -> tuple[str, dict[str, Any]]:
    """The warning for a reference that agrees with its int8 model on only ``agree`` of the
    calibration images, and its record: the nodes where they part, and the keep_float
    patterns around them with the agreement measured when those stay float (static only:
    QAT would be fine-tuned again)."""
    from edgeopt.quantize.layers import match_layers, quantizable_layers

    try:
        located = locate_divergence(reference, int8_model, calibration[:64])
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never fail the quantization
        return (f"the torch.ao reference model agrees with the int8 model on only {100 * agree:.1f} % of "
                f"calibration images (top-1); the agreement check is weaker than usual (locating where they "
                f"part failed: {brief(exc, 120)})"), {"error": brief(exc, 200)}
    keep: list[str] = []
    keep_agree = None
    if cfg.method != "qat":
        layers = [n for n in quantizable_layers(model) if n not in keep_float]
        keep = keep_float_patterns(located, layers)
        if keep:
            try:
                keep_agree = _fx_agreement(model, cfg, calibration, keep_float + match_layers(layers, keep))
            except Exception:  # noqa: BLE001 - not measured: then not suggested
                keep_agree = None
    record = {"nodes": located, "keep_float": keep, "keep_float_agreement": keep_agree}
    return divergence_warning(agree, located, keep, keep_agree), record


def _fx_static(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, keep_float: list[str],
               data: Any, out: Path) -> tuple[nn.Module, nn.Module, list[str], list[str], list[str], dict[str, Any]]:
    from torch.ao.quantization.quantize_fx import (
        convert_fx,
        convert_to_reference_fx,
        prepare_fx,
        prepare_qat_fx,
    )

    qat = cfg.method == "qat"
    mapping = _fx_qconfig_mapping(cfg, keep_float, qat)
    example = (calibration[:2].clone(),)
    src = copy.deepcopy(model).train(qat)
    try:
        prepared = (prepare_qat_fx if qat else prepare_fx)(src, mapping, example)
    except Exception as exc:  # noqa: BLE001 - any tracer failure becomes one line naming the layer
        raise untraceable(exc, src, "torch.ao FX (prepare_fx)", _FX_HINT) from None
    extra: dict[str, Any] = {}
    if qat:
        extra["qat"] = qat_finetune(prepared, model, cfg, calibration, data, out, exported=False)
        prepared.eval()
    else:
        calibrate(prepared, calibration)
    reference = convert_to_reference_fx(copy.deepcopy(prepared))
    int8_model = keepdim_means(convert_fx(prepared))  # quantized mean([2, 3]) on [N, C, 1, 1]
    int8, floats, warns = _layer_report(model, int8_model, keep_float, cfg.engine, "static")
    mods = dict(int8_model.named_modules())
    inputs = _fx_input_qparams(int8_model)
    qparams = {}
    for n in int8:
        w = int8_weight_qparams(mods[n])
        if w is not None:
            qparams[n] = {"weight": w, **({"input": inputs[n]} if n in inputs else {})}
    try:
        # the SE squeeze and gate round as the x86/fbgemm int8 kernels do (checked code for code on x86)
        rounding = (match_int8_rounding(reference, int8_pool_layouts(int8_model, calibration[:2]))
                    if cfg.engine in ("x86", "fbgemm") else {})
        agree = _agreement(reference, int8_model, calibration[:256])
    except RuntimeError as exc:  # an int8 kernel that refuses a layout or shape: one line
        raise UnsupportedModelError(
            f"the torch.ao int8 model ({cfg.engine}) of {type(model).__name__} fails to run: "
            f"{brief(exc, 200)}; quantize it with --backend onnxruntime") from None
    extra["reference_int8_rounding"] = rounding
    if agree < 0.99:
        warning, extra["reference_divergence"] = _explain_divergence(
            model, cfg, calibration, keep_float, reference, int8_model, agree)
        warns.append(warning)
    meta = {"exporter": "torch.ao.quantization.quantize_fx", "reference_agreement_calibration": agree, **extra}
    return int8_model, reference, int8, floats, warns, {"qparams": qparams, **meta}


def _fx_dynamic(model: nn.Module, cfg: QuantConfig, keep_float: list[str]
                ) -> tuple[nn.Module, nn.Module, list[str], list[str], list[str], dict[str, Any]]:
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    from edgeopt.quantize.layers import quantizable_layers
    from edgeopt.quantize.simulate import QuantSim

    targets = [n for n, m in model.named_modules() if n and isinstance(m, DYNAMIC_TYPES)]
    chosen = [n for n in targets if n not in keep_float]
    if not chosen:
        convs = len([n for n in quantizable_layers(model) if n not in targets])
        have = f"it has {convs} Conv layer(s) and no other" if not targets else "every one is in keep_float"
        raise UnsupportedModelError(
            f"dynamic quantization only covers Linear/LSTM/GRU layers and {have}; use method='static'"
        )
    spec = {n: per_channel_dynamic_qconfig if cfg.per_channel and isinstance(dict(model.named_modules())[n], nn.Linear)
            else default_dynamic_qconfig for n in chosen}
    int8_model = quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)
    mods = dict(int8_model.named_modules())
    int8 = [n for n in chosen if _is_int8_module(mods[n])]
    floats = [n for n in targets if n not in int8]
    warns = [f"layer {n} ({type(mods[n]).__name__}) was not converted by quantize_dynamic and stays float"
             for n in floats if n not in keep_float]
    others = [n for n in quantizable_layers(model) if n not in targets]
    if others:
        warns.append(f"dynamic quantization leaves the {len(others)} Conv layer(s) float; method='static' "
                     f"quantizes them too")
    # x86/fbgemm dynamic kernels quantize each batch to [0, 127] (reduce_range); qnnpack to [0, 255]
    dyn_input = {"dynamic": True, "dtype": "uint8", "reduce_range": cfg.engine != "qnnpack"}
    qparams: dict[str, Any] = {}
    for n in int8:
        w = int8_weight_qparams(mods[n])
        if w is not None and isinstance(dict(model.named_modules())[n], nn.Linear):
            qparams[n] = {"weight": w, "input": dict(dyn_input)}
    unsimulated = [n for n in int8 if n not in qparams]
    if unsimulated:
        warns.append(f"the reference simulates Linear layers only; {', '.join(unsimulated)} run float there")
    reference = QuantSim(model, qparams)
    return int8_model, reference, int8, floats, warns, {"qparams": qparams,
                                                       "exporter": "torch.ao.quantization.quantize_dynamic"}


def _save_torchscript(int8_model: nn.Module, spec: Any, out: Path, example: torch.Tensor) -> dict[str, Any]:
    """Trace, freeze and save the int8 model atomically, the ModelSpec embedded (as export does).

    Traced here rather than by ``export_torchscript``: its layer-naming forward hooks make
    ``torch.jit.trace`` fail on torch.ao's quantized modules.
    """
    import json
    import time

    from edgeopt._io import write_with_atomic
    from edgeopt.export.torchscript_export import SPEC_EXTRA_FILE

    t0 = time.perf_counter()
    with torch.no_grad():
        module = torch.jit.freeze(torch.jit.trace(int8_model.eval(), (example,), check_trace=False).eval())
    extra = {SPEC_EXTRA_FILE: json.dumps(spec.to_dict())}
    write_with_atomic(out, lambda tmp: torch.jit.save(module, str(tmp), _extra_files=extra))
    return {"method": "trace", "frozen": True, "export_seconds": round(time.perf_counter() - t0, 3),
            "versions": {"torch": str(torch.__version__)}}


def build(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, out: Path,
          keep_float: list[str], data: Any) -> Built:
    """Quantize ``model`` with torch.ao FX (x86/fbgemm/qnnpack) or torchao PT2E (pt2e-x86).

    See :class:`~edgeopt.quantize._base.QuantBackend` for the arguments.

    Raises:
        MissingDependencyError: torch.ao FX or the engine is missing from this torch build,
            or torchao for pt2e-x86.
        UnsupportedModelError: the model cannot be traced (the layer and line are named), or
            dynamic quantization finds no Linear/LSTM/GRU layer.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> from edgeopt.quantize import quantize
        >>> data = get_dataset("digits")
        >>> cfg = QuantConfig(backend="torch", engine="x86")
        >>> res = quantize(create_model("simple_cnn", data.spec), cfg, data, "/tmp/m")  # doctest: +SKIP
        >>> res.artifact.path.name, res.artifact.meta["quantized_engine"]  # doctest: +SKIP
        ('m.torchscript', 'x86')
    """
    from edgeopt.artifact import Artifact

    if cfg.engine == "pt2e-x86":
        from edgeopt.quantize._torch_pt2e import build_pt2e

        return build_pt2e(model, cfg, calibration, out, keep_float, data)
    _require_fx(cfg.engine)
    spec = get_spec(model)
    model = model.eval()
    with quantized_engine(cfg.engine), quiet():
        if cfg.method == "dynamic":
            int8_model, reference, int8, floats, warns, extra = _fx_dynamic(model, cfg, keep_float)
        else:
            int8_model, reference, int8, floats, warns, extra = _fx_static(model, cfg, calibration, keep_float, data, out)
        ts_meta = _save_torchscript(int8_model, spec, out, calibration[:2].clone())
    qparams = extra.pop("qparams")
    for attr in ("edgeopt_spec", "edgeopt_arch"):
        if hasattr(model, attr):
            setattr(reference, attr, getattr(model, attr))
    precision = "mixed" if floats else "int8"
    qat_info = extra.pop("qat", None)  # recorded once, under meta["quantization"] by quantize()
    meta = {**ts_meta, **extra, "quantized_engine": cfg.engine, "quantized_layers": len(int8),
            "source": {"arch": getattr(model, "edgeopt_arch", None), "class": type(model).__name__},
            "lineage": list(getattr(model, "edgeopt_lineage", None) or []) + [
                {"step": "quantize", "method": cfg.method, "backend": "torch", "engine": cfg.engine}]}
    artifact = Artifact(out, "torchscript", spec, precision, meta)
    artifact.save_sidecar()
    return Built(artifact, reference.eval(), float_layers=floats, warnings=warns, qparams=qparams,
                 meta={"quantized_layers": len(int8), "quantized_engine": cfg.engine,
                       **{k: v for k, v in extra.items() if k.startswith("reference_")},
                       **({"qat": qat_info} if qat_info else {})})


BACKEND = QuantBackend("torch", ("static", "dynamic", "qat"), _suffix, build, available)
