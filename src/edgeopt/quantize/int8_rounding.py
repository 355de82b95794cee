"""A torch.ao reference model that rounds as the int8 kernels do.

``convert_to_reference_fx`` runs float ops between quantize/dequantize pairs; torch's int8
CPU kernels compute on the integer codes. For most ops the two give the same codes, or
differ on a handful of near-ties (convs: a few codes in 10^5). Two ops of squeeze-excitation
blocks differ on many more, measured node by node on CIFAR-10 32x32 models trained briefly
(engine x86, 7-bit activations, minmax; see :mod:`edgeopt.quantize.divergence`):

* the global average pool (the squeeze): the kernel rounds the mean of the codes exactly,
  half to even; on a 2x2 map 1 mean in 4 is an exact tie, and the reference's float mean
  rounds about 1 in 10 of those the other way;
* the gate ``mul``: the kernel requantizes the integer product with one float32 multiplier;
  its output scale is the features' own (the gate is <= 1), so products land on ties.

One LSB on a few % of the pooled values, but quantized MobileNetV3-small / RegNetY-400MF /
EfficientNet-B0 amplify it: top-1 agreement of reference and int8 model on 256 calibration
images went from 69.9 % / 38.7 % / 21.5 % to 99.2 % / 97.7 % / 90.2 % once the reference
rounds those two ops as the kernels do (what is left: convs rounding a few codes in 10^5
otherwise, amplified by models whose int8 logits are only 1-7 dB SQNR from float).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn


def int8_global_avg_pool(q: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Global average pool of a quantized NCHW tensor as torch's quantized CPU kernel computes
    it, dequantized. Its two paths round differently: on a channels-last input (the int8
    convs' outputs) code = zp + round((sum(codes) - zp * n) * f32(1 / n)), on a contiguous
    one (a requantized float op's output) code = round(sum(codes) * f32(1 / n)); both in
    float32, half to even.

    Example:
        >>> q = torch.quantize_per_tensor(torch.tensor([[[[0.0, 0.1], [0.1, 0.1]]]]), 0.1, 0, torch.quint8)
        >>> round(float(int8_global_avg_pool(q)), 4)  # mean 0.75 LSB -> 1 LSB
        0.1
    """
    f32 = torch.float32
    kh, kw = q.shape[-2], q.shape[-1]
    zp = q.q_zero_point()
    total = q.int_repr().to(torch.int64).sum((-2, -1), keepdim=True)
    if channels_last:
        code = torch.round((total - zp * kh * kw).to(f32) * (torch.tensor(1.0, dtype=f32) / (kh * kw))) + zp
    else:
        code = torch.round(total.to(f32) * ((torch.tensor(1.0, dtype=f32) / kh) / kw))
    return (code.clamp(0, 255) - zp) * q.q_scale()


def int8_pool_layouts(int8_model: fx.GraphModule, x: torch.Tensor) -> dict[str, bool]:
    """``{module: input is channels-last}`` for the int8 model's ``AdaptiveAvgPool2d`` modules,
    from one run on ``x`` (the layout picks the kernel's rounding, see
    :func:`int8_global_avg_pool`).

    Example:
        >>> int8_pool_layouts(fx.symbolic_trace(nn.Sequential(nn.AdaptiveAvgPool2d(1))), torch.randn(1, 2, 4, 4))
        {'0': False}
    """
    mods = dict(int8_model.named_modules())
    out: dict[str, bool] = {}

    class _Probe(fx.Interpreter):
        def call_module(self, target: str, args: Any, kwargs: Any) -> Any:
            if isinstance(mods.get(target), nn.AdaptiveAvgPool2d) and isinstance(args[0], torch.Tensor):
                t = args[0]  # the kernel's own test (a [N, 1, H, W] tensor is both: channels-last path)
                out[target] = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
            return super().call_module(target, args, kwargs)

    with torch.no_grad():
        _Probe(int8_model).run(x)
    return out


def int8_mul(a: torch.Tensor, b: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``a * b`` of two quantized tensors as torch's quantized ``mul`` kernel computes it
    (the integer product times one float32 multiplier, rounded half to even, clamped to
    uint8), dequantized with ``scale``/``zero_point``.

    Example:
        >>> a = torch.quantize_per_tensor(torch.tensor([0.5]), 1 / 256, 0, torch.quint8)
        >>> b = torch.quantize_per_tensor(torch.tensor([3.0]), 0.1, 0, torch.quint8)
        >>> float(int8_mul(a, b, 0.1, 0))  # 1.5 / 0.1 = 15 codes
        1.5
    """
    f32 = torch.float32
    mult = (torch.tensor(a.q_scale(), dtype=f32) * torch.tensor(b.q_scale(), dtype=f32)
            * (torch.tensor(1.0, dtype=f32) / torch.tensor(scale, dtype=f32)))
    c = ((a.int_repr().to(torch.int32) - a.q_zero_point()) * (b.int_repr().to(torch.int32) - b.q_zero_point()))
    code = (torch.round(c.to(f32) * mult) + zero_point).clamp(0, 255)
    return (code - zero_point) * scale


def _dequantized(node: Any) -> fx.Node | None:
    """The quantized tensor behind a reference ``x.dequantize()`` node, else None."""
    if isinstance(node, fx.Node) and node.op == "call_method" and node.target == "dequantize":
        return node.args[0]
    return None


def match_int8_rounding(reference: fx.GraphModule, layouts: dict[str, bool] | None = None) -> dict[str, int]:
    """Make a torch.ao reference model round global average pools and two-tensor ``mul``
    (squeeze-excitation's squeeze and gate) as the int8 kernels do, in place.

    Only these two: measured node by node, they are the ops whose int8 kernels part from
    the float reference on more than a handful of values (convs, adds, hardswish and
    sigmoid agree to the code, or nearly). The quantization points are unchanged.

    Args:
        reference: ``convert_to_reference_fx`` of the calibrated model (x86/fbgemm engine).
        layouts: :func:`int8_pool_layouts` of the int8 model; a pool missing there is
            taken as channels-last (fed by an int8 conv).

    Returns:
        ``{"global_avg_pool": n, "mul": m}``: how many nodes now compute the int8 way.

    Example:
        >>> from torch.ao.quantization import get_default_qconfig_mapping
        >>> from torch.ao.quantization.quantize_fx import convert_to_reference_fx, prepare_fx
        >>> class SE(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.pool, self.fc = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1)
        ...     def forward(self, x):
        ...         y = self.conv(x)
        ...         return y * torch.sigmoid(self.fc(self.pool(y)))
        >>> p = prepare_fx(SE().eval(), get_default_qconfig_mapping("x86"), (torch.randn(1, 3, 8, 8),))
        >>> _ = p(torch.randn(4, 3, 8, 8))
        >>> match_int8_rounding(convert_to_reference_fx(p))
        {'global_avg_pool': 1, 'mul': 1}
    """
    mods = dict(reference.named_modules())
    graph = reference.graph
    done = {"global_avg_pool": 0, "mul": 0}
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target is torch.quantize_per_tensor):
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op not in ("call_module", "call_function"):
            continue
        mod = mods.get(src.target) if src.op == "call_module" else None
        if isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1)):
            q = _dequantized(src.args[0])
            if q is None:
                continue
            with graph.inserting_before(src):
                new = graph.call_function(int8_global_avg_pool, (q, (layouts or {}).get(str(src.target), True)))
            done["global_avg_pool"] += 1
        elif (src.op == "call_function" and src.target in (operator.mul, torch.mul) and len(src.args) == 2
              and all(_dequantized(a) is not None for a in src.args)):
            scale, zp = (getattr(reference, a.target) for a in node.args[1:3])
            with graph.inserting_before(src):
                new = graph.call_function(int8_mul, (_dequantized(src.args[0]), _dequantized(src.args[1]),
                                                     float(scale), int(zp)))
            done["mul"] += 1
        else:
            continue
        new.meta = {**src.meta, "edgeopt_replaces": src.name}  # so the int8 node still pairs with it
        src.replace_all_uses_with(new)
        graph.erase_node(src)
    graph.eliminate_dead_code()
    reference.recompile()
    return done
