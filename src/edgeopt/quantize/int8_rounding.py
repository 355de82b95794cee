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

timm's models showed more (CIFAR-10 32x32, trained elsewhere, x86 with AVX-512 VNNI):

* the functional squeeze ``x.mean((2, 3), keepdim=True)`` (timm's ``SqueezeExcite``): on a
  channels-last input the kernel dequantizes and averages in float *in channels-last
  order*, the reference its NCHW copy: exact ties of a 4x4 map round apart (1-2 % of the
  squeezed codes, 1 LSB on a squeeze that keeps the feature map's scale).
  mobilenetv3_large_100 agreed 89.8 % with its int8 model, 97.7 % once the reference
  rounds its means the int8 way; ghostnet_100 90.6 %, then 99.6 %;
* ``torch.cat`` (GhostNet's ``GhostModule``): torch.ao gives a cat and its inputs one
  observer, but the int8 graph keeps no quantization point after an input that only
  passes a tensor on (an ``Identity``): that input reaches the cat on its producer's grid
  and the int8 cat requantizes it (fused multiply-add dequantization, float32 reciprocal),
  where the reference quantized it a step before. Exact ties round apart (scale ratios
  1.25, 1.5, ...); on ghostnet_100 it changed no prediction, but the reference now
  quantizes where the int8 graph does: an int8 node whose output is on another grid than
  the reference's quantization point after it (:func:`int8_probe` measures them) gives
  the reference that grid (:func:`match_quantization_points`).

The kernels as computed on the codes are in :mod:`edgeopt.quantize.torch_int8_kernels`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from edgeopt.quantize.torch_int8_kernels import int8_cat, int8_global_avg_pool, int8_mean, int8_mul

__all__ = ["Int8Probe", "int8_cat", "int8_global_avg_pool", "int8_mean", "int8_mul", "int8_pool_layouts",
           "int8_probe", "match_int8_rounding", "match_quantization_points"]


#: reference/int8 ops whose kernel reads the input layout: pools and means (squeeze), cat
_MEANS = ("mean",)
_CAT_FUNCS = (torch.cat, torch.concat)


def _is_global_pool_fn(node: fx.Node) -> bool:
    """``F.adaptive_avg_pool2d(x, 1)`` as a call_function node."""
    if node.op != "call_function" or node.target is not nn.functional.adaptive_avg_pool2d:
        return False
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
    return size in (1, (1, 1), [1, 1])


def _is_mean(node: fx.Node) -> bool:
    return ((node.op == "call_method" and node.target in _MEANS)
            or (node.op == "call_function" and node.target is torch.mean))


def _is_cat(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _CAT_FUNCS


@dataclass
class Int8Probe:
    """What one run of the int8 model shows the reference needs (see :func:`int8_probe`).

    ``layouts``: ``{pool module / mean or cat node: its tensor inputs are channels-last}``
    (the layout picks the kernel's rounding); ``qparams``: ``{int8 node: (scale, zero
    point)}`` of every quantized output.
    """

    layouts: dict[str, bool] = field(default_factory=dict)
    qparams: dict[str, tuple[float, int]] = field(default_factory=dict)


def int8_probe(int8_model: fx.GraphModule, x: torch.Tensor) -> Int8Probe:
    """Run the int8 model once on ``x`` and record the input layout of its global average
    pools (modules keyed by name, ``F.adaptive_avg_pool2d`` / mean nodes by node name) and
    cats, and the output scale and zero point of every node with a quantized output.

    Example:
        >>> p = int8_probe(fx.symbolic_trace(nn.Sequential(nn.AdaptiveAvgPool2d(1))), torch.randn(1, 2, 4, 4))
        >>> p.layouts, p.qparams
        ({'0': False}, {})
    """
    mods = dict(int8_model.named_modules())
    probe = Int8Probe()

    def _cl(t: Any) -> bool:
        # the kernels' own test (a [N, C, 1, 1] tensor is both: the channels-last path)
        return isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)

    class _Probe(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            if n.op in ("call_module", "call_function", "call_method"):
                args, _ = self.fetch_args_kwargs_from_env(n)
                if n.op == "call_module" and isinstance(mods.get(n.target), nn.AdaptiveAvgPool2d):
                    probe.layouts[str(n.target)] = _cl(args[0])
                elif _is_mean(n) or _is_global_pool_fn(n):
                    probe.layouts[n.name] = _cl(args[0])
                elif _is_cat(n) and isinstance(args[0], (list, tuple)) and args[0]:
                    probe.layouts[n.name] = all(_cl(t) for t in args[0])
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_quantized and out.qscheme() == torch.per_tensor_affine:
                probe.qparams[n.name] = (float(out.q_scale()), int(out.q_zero_point()))
            return out

    with torch.no_grad():
        _Probe(int8_model).run(x)
    return probe


def int8_pool_layouts(int8_model: fx.GraphModule, x: torch.Tensor) -> dict[str, bool]:
    """``{module or node: input is channels-last}`` for the int8 model's global average pools,
    means and cats, from one run on ``x`` (the layouts of :func:`int8_probe`).

    Example:
        >>> int8_pool_layouts(fx.symbolic_trace(nn.Sequential(nn.AdaptiveAvgPool2d(1))), torch.randn(1, 2, 4, 4))
        {'0': False}
    """
    return int8_probe(int8_model, x).layouts


def _dequantized(node: Any) -> fx.Node | None:
    """The quantized tensor behind a reference ``x.dequantize()`` node, else None."""
    if isinstance(node, fx.Node) and node.op == "call_method" and node.target == "dequantize":
        return node.args[0]
    return None


def _same_op(ref: fx.Node, int8: fx.Node) -> bool:
    """Whether an int8 node of the same name is the same op (convert keeps the prepared
    graph's names for modules and for the functions it leaves in place: cat, mean, ...)."""
    return ref.op == int8.op and ref.target == int8.target


def _quantization_points(graph: fx.Graph) -> Iterator[tuple[fx.Node, fx.Node]]:
    """``(quantize_per_tensor node, the node whose output it quantizes)`` for every
    quantization point of a reference graph that follows a computing node; lazily, so a
    caller that rewrites the graph sees each point's source as it is when reached."""
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target is torch.quantize_per_tensor):
            continue
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op in ("call_module", "call_function", "call_method"):
            yield node, src


def match_quantization_points(reference: fx.GraphModule, int8_model: fx.GraphModule,
                              qparams: dict[str, tuple[float, int]]) -> int:
    """Give each reference quantization point the grid the int8 model really has there, in
    place; returns how many changed.

    torch.ao shares one observer between a cat and its inputs (and between ops that only
    pass a tensor on and their input), but the int8 graph requantizes only at the cat: an
    ``Identity`` before it keeps its producer's scale, where the reference quantizes its
    output with the cat's. ``qparams`` (:func:`int8_probe`) holds the measured output grid
    of every int8 node; a reference quantize node after a node of the same name and op
    takes that grid when it differs.

    Example:
        >>> from torch.ao.quantization import get_default_qconfig_mapping
        >>> from torch.ao.quantization.quantize_fx import convert_fx, convert_to_reference_fx, prepare_fx
        >>> class Ghost(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.pass_on = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Identity()
        ...     def forward(self, x):
        ...         y = self.a(x)
        ...         return torch.cat([y, self.pass_on(self.b(y))], 1)
        >>> torch.manual_seed(0) and None
        >>> p = prepare_fx(Ghost().eval(), get_default_qconfig_mapping("x86"), (torch.randn(1, 3, 4, 4),))
        >>> _ = p(torch.randn(8, 3, 4, 4) * 3)
        >>> import copy
        >>> ref, q = convert_to_reference_fx(copy.deepcopy(p)), convert_fx(p)
        >>> match_quantization_points(ref, q, int8_probe(q, torch.randn(2, 3, 4, 4)).qparams)  # the Identity's
        1
    """
    int8_nodes = {n.name: n for n in int8_model.graph.nodes}
    graph = reference.graph
    changed = 0
    for node, src in _quantization_points(graph):
        other = int8_nodes.get(src.name)
        if other is None or src.name not in qparams or not _same_op(src, other):
            continue
        scale_node, zp_node = node.args[1:3]
        if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in (scale_node, zp_node)):
            continue
        scale, zp = qparams[src.name]
        old_scale, old_zp = float(getattr(reference, scale_node.target)), int(getattr(reference, zp_node.target))
        if math.isclose(old_scale, scale, rel_tol=1e-6) and old_zp == zp:
            continue
        attrs = []
        for target, value, dtype in ((scale_node.target, scale, torch.float32), (zp_node.target, zp, torch.int64)):
            name = f"{target}_int8".replace(".", "_")
            reference.register_buffer(name, torch.tensor(value, dtype=dtype))
            with graph.inserting_before(node):
                attrs.append(graph.get_attr(name))
        node.args = (src, *attrs, *node.args[3:])
        changed += 1
    if changed:
        graph.eliminate_dead_code()
        reference.recompile()
    return changed


def match_int8_rounding(reference: fx.GraphModule, layouts: dict[str, bool] | None = None,
                        int8_model: fx.GraphModule | None = None,
                        qparams: dict[str, tuple[float, int]] | None = None) -> dict[str, int]:
    """Make a torch.ao reference model quantize where and round as the x86/fbgemm int8
    kernels do, in place: global average pools and means (squeeze-excitation's squeeze),
    two-tensor ``mul`` (its gate), ``torch.cat``, and the quantization points the int8
    graph keeps on another grid (:func:`match_quantization_points`, when ``int8_model``
    and ``qparams`` are given).

    Only these: measured node by node, they are the ops whose int8 kernels part from the
    float reference on more than a handful of values (convs, adds, hardswish and sigmoid
    agree to the code, or nearly).

    Args:
        reference: ``convert_to_reference_fx`` of the calibrated model (x86/fbgemm engine).
        layouts: :func:`int8_pool_layouts` of the int8 model; a pool, mean or cat missing
            there is taken as channels-last (fed by int8 convs).
        int8_model: the ``convert_fx`` model, to pair nodes by name for ``qparams``.
        qparams: :attr:`Int8Probe.qparams` of the int8 model.

    Returns:
        ``{"global_avg_pool", "mean", "mul", "cat", "quantization_points"}``: how many nodes
        now compute (or quantize) the int8 way.

    Example:
        >>> from torch.ao.quantization import get_default_qconfig_mapping
        >>> from torch.ao.quantization.quantize_fx import convert_to_reference_fx, prepare_fx
        >>> class SE(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.pool, self.fc = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1)
        ...     def forward(self, x):
        ...         y = self.conv(x)
        ...         return y * torch.sigmoid(self.fc(self.pool(y) + y.mean((2, 3), keepdim=True)))
        >>> p = prepare_fx(SE().eval(), get_default_qconfig_mapping("x86"), (torch.randn(1, 3, 8, 8),))
        >>> _ = p(torch.randn(4, 3, 8, 8))
        >>> match_int8_rounding(convert_to_reference_fx(p))
        {'global_avg_pool': 1, 'mean': 1, 'mul': 1, 'cat': 0, 'quantization_points': 0}
    """
    mods = dict(reference.named_modules())
    graph = reference.graph
    layouts = layouts or {}
    done = {"global_avg_pool": 0, "mean": 0, "mul": 0, "cat": 0, "quantization_points": 0}
    if int8_model is not None and qparams:
        done["quantization_points"] = match_quantization_points(reference, int8_model, qparams)
    for node, src in _quantization_points(graph):
        mod = mods.get(src.target) if src.op == "call_module" else None
        cl = layouts.get(str(src.target) if src.op == "call_module" else src.name, True)
        if (isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1))) or _is_global_pool_fn(src):
            q = _dequantized(src.args[0])
            if q is None:
                continue
            with graph.inserting_before(src):
                new = graph.call_function(int8_global_avg_pool, (q, cl))
            done["global_avg_pool"] += 1
        elif _is_mean(src):
            q = _dequantized(src.args[0])
            dims = src.args[1] if len(src.args) > 1 else src.kwargs.get("dim")
            keep = src.args[2] if len(src.args) > 2 else src.kwargs.get("keepdim", False)
            if isinstance(dims, int):
                dims = (dims,)
            if (q is None or not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, int) for d in dims)
                    or not isinstance(keep, bool) or src.kwargs.get("dtype") is not None):
                continue  # a mean over everything, dims computed at run time, a dtype: left alone
            with graph.inserting_before(src):
                new = graph.call_function(int8_mean, (q, tuple(dims), keep, cl))
            done["mean"] += 1
        elif (src.op == "call_function" and src.target in (operator.mul, torch.mul) and len(src.args) == 2
              and all(_dequantized(a) is not None for a in src.args)):
            scale, zp = (getattr(reference, a.target) for a in node.args[1:3])
            with graph.inserting_before(src):
                new = graph.call_function(int8_mul, (_dequantized(src.args[0]), _dequantized(src.args[1]),
                                                     float(scale), int(zp)))
            done["mul"] += 1
        elif _is_cat(src):
            tensors = src.args[0] if src.args else src.kwargs.get("tensors")
            dim = src.args[1] if len(src.args) > 1 else src.kwargs.get("dim", 0)
            qs = [_dequantized(a) for a in tensors] if isinstance(tensors, (list, tuple)) else []
            if not qs or any(q is None for q in qs) or not isinstance(dim, int):
                continue
            with graph.inserting_before(src):
                new = graph.call_function(int8_cat, (qs, dim, cl))
            done["cat"] += 1
        else:
            continue
        # so the int8 node still pairs with it (by name, and for functions by what it replaced)
        new.meta = {**src.meta, "edgeopt_replaces": src.name, "edgeopt_replaces_target": src.target}
        src.replace_all_uses_with(new)
        graph.erase_node(src)
    graph.eliminate_dead_code()
    reference.recompile()
    return done
