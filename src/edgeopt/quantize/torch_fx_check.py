"""The torch.ao int8 model checked against its fake-quant reference.

The reference is ``convert_to_reference_fx`` of the calibrated model: float ops between
quantize/dequantize pairs with the int8 model's very scales. On x86/fbgemm it is made to
quantize where, and round as, the int8 kernels do (:mod:`edgeopt.quantize.int8_rounding`:
global average pools and means, the SE gate ``mul``, ``torch.cat``, and the quantization
points the int8 graph keeps on its producer's grid), measured on one run of the int8
model. Top-1 agreement on calibration images below 99 % gets a warning that names the
node where the two part and why (:mod:`edgeopt.quantize.divergence`), and whether keeping
its layers float helps, measured by quantizing again.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgeopt.errors import brief
from edgeopt.quantize._torch_common import CALIB_BATCH, calibrate, keepdim_means
from edgeopt.quantize.config import QuantConfig
from edgeopt.quantize.divergence import divergence_warning, keep_float_patterns, locate_divergence
from edgeopt.quantize.int8_rounding import int8_probe, match_int8_rounding
from edgeopt.quantize.torch_fx_qconfig import fx_qconfig_mapping


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Top-1 agreement of two models on ``x`` (batches of ``CALIB_BATCH``).

    Example:
        >>> m = nn.Linear(4, 3)
        >>> agreement(m, m, torch.randn(8, 4))
        1.0
    """
    with torch.no_grad():
        pa = torch.cat([a(x[i:i + CALIB_BATCH]) for i in range(0, len(x), CALIB_BATCH)]).argmax(1)
        pb = torch.cat([b(x[i:i + CALIB_BATCH]) for i in range(0, len(x), CALIB_BATCH)]).argmax(1)
    return float((pa == pb).float().mean())


def match_reference(reference: Any, int8_model: Any, engine: str, x: torch.Tensor) -> dict[str, int]:
    """Make ``reference`` quantize and round as ``int8_model``'s kernels do (x86/fbgemm; in
    place), from one run of the int8 model on ``x[:2]``; returns what changed (see
    :func:`~edgeopt.quantize.int8_rounding.match_int8_rounding`), ``{}`` on other engines."""
    if engine not in ("x86", "fbgemm"):
        return {}
    probe = int8_probe(int8_model, x[:2])
    return match_int8_rounding(reference, probe.layouts, int8_model, probe.qparams)


def fx_agreement(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, keep_float: list[str]) -> float:
    """Top-1 agreement of reference and int8 model on the calibration images when
    ``keep_float`` stays float (static PTQ; what a suggested --keep-float would give)."""
    from torch.ao.quantization.quantize_fx import convert_fx, convert_to_reference_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(model).eval(), fx_qconfig_mapping(cfg, keep_float, False),
                          (calibration[:2].clone(),))
    calibrate(prepared, calibration)
    reference = convert_to_reference_fx(copy.deepcopy(prepared))
    int8_model = keepdim_means(convert_fx(prepared))
    match_reference(reference, int8_model, cfg.engine, calibration)
    return agreement(reference, int8_model, calibration[:256])


def explain_divergence(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, keep_float: list[str],
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
                keep_agree = fx_agreement(model, cfg, calibration, keep_float + match_layers(layers, keep))
            except Exception:  # noqa: BLE001 - not measured: then not suggested
                keep_agree = None
    record = {"nodes": located, "keep_float": keep, "keep_float_agreement": keep_agree}
    return divergence_warning(agree, located, keep, keep_agree), record
