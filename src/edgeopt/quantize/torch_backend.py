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
means, two-tensor ``mul`` and ``torch.cat`` round as the int8 kernels do, and its
quantization points take the grid the int8 graph really has (squeeze-excitation blocks:
the float ops rounded ties otherwise, and MobileNetV3 agreed only 69.9 % with its int8
model; see :mod:`edgeopt.quantize.int8_rounding`). Below 99 % agreement on calibration
images the warning names the node where the two part, why, and whether keeping its layers
float helps (measured by quantizing again), and ``reference_divergence`` records them
(:mod:`edgeopt.quantize.torch_fx_check`).

The parts: :mod:`~edgeopt.quantize.torch_fx_qconfig` (engines, QConfigMapping),
:mod:`~edgeopt.quantize.torch_fx_layers` (int8 layers and their scales),
:mod:`~edgeopt.quantize.torch_fx_check` (the reference and the agreement check),
:mod:`~edgeopt.quantize.torch_fx_dynamic` (dynamic quantization); this module builds and
saves the artifact.

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

from edgeopt.errors import UnsupportedModelError, brief
from edgeopt.quantize import torch_fx_check
from edgeopt.quantize._base import Built, QuantBackend
from edgeopt.quantize._torch_common import (
    calibrate,
    keepdim_means,
    qat_finetune,
    quantized_engine,
    quiet,
    untraceable,
)
from edgeopt.quantize.config import QuantConfig
from edgeopt.quantize.torch_fx_dynamic import DYNAMIC_TYPES, fx_dynamic
from edgeopt.quantize.torch_fx_layers import fx_input_qparams, int8_weight_qparams, layer_report
from edgeopt.quantize.torch_fx_qconfig import FX_ENGINES, fx_qconfig_mapping, require_fx
from edgeopt.spec import get_spec

__all__ = ["BACKEND", "DYNAMIC_TYPES", "FX_ENGINES", "available", "build", "int8_weight_qparams"]

#: the former private name, for code that imported it from here
_fx_qconfig_mapping = fx_qconfig_mapping


def _suffix(cfg: QuantConfig) -> str:
    """FX engines write TorchScript; pt2e-x86 a torch.export archive (see _torch_pt2e)."""
    return ".pt2" if cfg.engine == "pt2e-x86" else ".torchscript"


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


_FX_HINT = ("FX graph mode needs a forward() without Python control flow on tensor values: make the branch "
            "tensor-free, or use backend='onnxruntime'")


def _fx_static(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, keep_float: list[str],
               data: Any, out: Path) -> tuple[nn.Module, nn.Module, list[str], list[str], list[str], dict[str, Any]]:
    from torch.ao.quantization.quantize_fx import (
        convert_fx,
        convert_to_reference_fx,
        prepare_fx,
        prepare_qat_fx,
    )

    qat = cfg.method == "qat"
    mapping = fx_qconfig_mapping(cfg, keep_float, qat)
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
    int8, floats, warns = layer_report(model, int8_model, keep_float, cfg.engine, "static")
    mods = dict(int8_model.named_modules())
    inputs = fx_input_qparams(int8_model)
    qparams = {}
    for n in int8:
        w = int8_weight_qparams(mods[n])
        if w is not None:
            qparams[n] = {"weight": w, **({"input": inputs[n]} if n in inputs else {})}
    try:
        # pools, means, the SE gate and cats round as the x86/fbgemm int8 kernels do, on the
        # int8 graph's own quantization points (checked code for code on x86)
        rounding = torch_fx_check.match_reference(reference, int8_model, cfg.engine, calibration)
        agree = torch_fx_check.agreement(reference, int8_model, calibration[:256])
    except RuntimeError as exc:  # an int8 kernel that refuses a layout or shape: one line
        raise UnsupportedModelError(
            f"the torch.ao int8 model ({cfg.engine}) of {type(model).__name__} fails to run: "
            f"{brief(exc, 200)}; quantize it with --backend onnxruntime") from None
    extra["reference_int8_rounding"] = rounding
    if agree < 0.99:
        warning, extra["reference_divergence"] = torch_fx_check.explain_divergence(
            model, cfg, calibration, keep_float, reference, int8_model, agree)
        warns.append(warning)
    meta = {"exporter": "torch.ao.quantization.quantize_fx", "reference_agreement_calibration": agree, **extra}
    return int8_model, reference, int8, floats, warns, {"qparams": qparams, **meta}


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
    require_fx(cfg.engine)
    spec = get_spec(model)
    model = model.eval()
    with quantized_engine(cfg.engine), quiet():
        if cfg.method == "dynamic":
            int8_model, reference, int8, floats, warns, extra = fx_dynamic(model, cfg, keep_float)
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
