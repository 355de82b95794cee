"""Why an int8 node computes otherwise than its torch.ao reference node: the cause text.

:func:`reason` names the cause from the node's op and what
:func:`~edgeopt.quantize.divergence.locate_divergence` measured around it: an input that
already differs from the reference's (the cause is before the node), an input the int8
graph leaves on its producer's grid, and for a layer off by more than rounding whether
this CPU has VNNI (without it fbgemm sums uint8 x int8 products in saturating 16-bit
pairs; with it that cannot be the cause, so the text does not claim it).
"""

from __future__ import annotations

from typing import Any

from edgeopt.quantize._base import cpu_vnni as cpu_has_vnni  # noqa: F401 - re-exported; None when unknown

#: ops with fixed output qparams (scale 1/256 or 2/256): their int8 kernels compute from the codes
_FIXED_QPARAMS = ("Sigmoid", "Hardsigmoid", "Tanh", "sigmoid", "hardsigmoid", "tanh")


def _grid(q: tuple[float, int]) -> str:
    return f"scale {q[0]:.4g}, zero point {q[1]}"


def reason(kind: str, src_kind: str, inputs: list[str], max_lsb: int, input_off: dict[str, Any] | None = None,
           regrid: list[dict[str, Any]] | None = None, vnni: bool | None = None) -> str:
    """Why a node computes otherwise than its reference node: from its op ``kind`` (the
    reference producer's ``src_kind``, its inputs' kinds ``inputs``), the largest
    difference ``max_lsb``, and what was measured around it (``input_off``: its own input
    already differs; ``regrid``: inputs that reach it on another grid than the
    reference's; ``vnni``: :func:`cpu_has_vnni`).

    Example:
        >>> reason("ConvReLU2d", "ConvReLU2d", [], 5, vnni=True)[:60]
        "the int8 ConvReLU2d is off by up to 5 LSB on the reference's"
        >>> "no VNNI" in reason("ConvReLU2d", "ConvReLU2d", [], 5, vnni=True)
        False
        >>> "has no VNNI" in reason("ConvReLU2d", "ConvReLU2d", [], 5, vnni=False)
        True
    """
    gate = any(k in _FIXED_QPARAMS for k in inputs)
    if input_off:
        return (f"its input already differs from the reference's ({100 * input_off['codes_off']:.2g} % of the input "
                f"codes, up to {input_off['max_lsb']} LSB), coming from {input_off['from']} before it, which has no "
                f"reference quantization point to be compared at: the difference starts there, not in this {kind}")
    if regrid:
        r = regrid[0]
        where = f"{r['layer']} ({r['op']})" if r.get("layer") else r["op"]
        return (f"its input {where} reaches it on its producer's grid ({_grid(r['int8'])}): the int8 graph keeps no "
                f"quantization point there, where the reference quantizes to the {kind}'s ({_grid(r['reference'])}), so "
                f"the int8 {kind} requantizes that input itself and rounds otherwise than the reference")
    if kind in ("mean", "int8_mean"):
        return ("the int8 mean dequantizes a channels-last input and averages it in float in channels-last order "
                "(a contiguous one: the integer sum divided, half to even), so exact ties land otherwise than in the "
                "reference's float mean of its NCHW copy (1 LSB on a squeeze that keeps the feature map's scale)")
    if kind in ("AdaptiveAvgPool2d", "AvgPool2d", "adaptive_avg_pool2d", "avg_pool2d", "int8_global_avg_pool"):
        return ("the int8 average pool rounds the mean of the integer codes half to even while the reference's "
                "float mean lands exact ties on either side (1 LSB on a pooled value that keeps the feature map's scale)")
    if kind in ("cat", "concat", "int8_cat"):
        return ("the int8 cat keeps its first input's grid and requantizes the other inputs (fused multiply-add "
                "dequantization, float32 reciprocal of the scale), rounding near-ties otherwise than the reference's "
                "float cat")
    if kind in ("mul", "mul_relu", "int8_mul") and gate:
        return ("fixed-qparams sigmoid/hardsigmoid output (scale 1/256) multiplied into the features: the int8 mul "
                "requantizes the integer product with one float32 multiplier and rounds near-ties otherwise than "
                "the reference's float mul")
    if kind in ("mul", "add", "mul_relu", "add_relu", "int8_mul"):
        return (f"requantized {kind}: the int8 kernel requantizes with a float32 multiplier and rounds near-ties "
                f"otherwise than the reference's float {kind}")
    if kind in ("Hardswish", "hardswish"):
        return "quantized hardswish: the int8 kernel evaluates x*relu6(x+3)/6 on the codes and rounds otherwise"
    if kind in _FIXED_QPARAMS:
        return (f"fixed-qparams {kind.lower()} output (scale 1/256, zero point 0): the int8 kernel computes it from the "
                f"codes and rounds otherwise than the reference's float {kind.lower()}")
    if kind == "quantize_per_tensor":
        return f"the output of a float op ({src_kind}) requantized: float rounding differs from the reference's"
    if max_lsb > 2:
        # more than rounding on the reference's own inputs (measured: they were fed to it)
        if vnni is False:
            return (f"the int8 {kind} is off by up to {max_lsb} LSB on the reference's own inputs, more than rounding: "
                    f"this CPU has no VNNI, so fbgemm sums uint8 x int8 products in saturating 16-bit pairs (8-bit "
                    f"activations; reduce_range=True keeps them to 7 bits), or its int32 accumulator overflows")
        has = "this CPU has VNNI, so not 16-bit saturated sums" if vnni else "VNNI unknown on this CPU"
        return (f"the int8 {kind} is off by up to {max_lsb} LSB on the reference's own inputs, more than rounding "
                f"({has}): an overflowing int32 accumulator or a kernel path that computes otherwise")
    return f"the int8 {kind} requantizes its int32 accumulator with a float32 multiplier and rounds near-ties otherwise"
