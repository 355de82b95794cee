"""Where and why a torch.ao int8 model parts from its fake-quant reference.

Both GraphModules come from the same calibrated ``prepare_fx`` graph: the reference
(``convert_to_reference_fx``) runs float ops between quantize/dequantize pairs, the int8
model (``convert_fx``) the engine's kernels. Each quantization point of the reference is a
``quantize_per_tensor`` whose scale attribute (``features_1_block_1_scale_0``) the int8 op
that replaced it still reads, or whose producer the int8 graph still calls by name
(``features.1.block.0.0``): that is how nodes are paired.

:func:`locate_divergence` runs both on the same images and measures, for each paired node,
the SQNR (dB) of the int8 output against the reference's, before (its inputs) and after
(its output), and whether the node itself computes something else: fed the reference's own
inputs, how many of its output codes differ. Nodes that differ themselves are ranked by
their SQNR drop; their op type names the reason.

The measured causes (SE blocks' global average pool and gate ``mul``) and the reference that
rounds them as the kernels do are in :mod:`edgeopt.quantize.int8_rounding`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx, nn

from edgeopt.quantize.math import sqnr

#: an SQNR above this counts as exact when drops are ranked: 60 dB is ~1/8 LSB of an 8-bit
#: full-scale signal (ideal 8-bit quantization gives ~48 dB), a few codes off by 1
_CAP_DB = 60.0
_FIXED_QPARAMS = ("Sigmoid", "Hardsigmoid", "Tanh", "sigmoid", "hardsigmoid", "tanh")


# -- pairing and recording ------------------------------------------------------------------------
class _Recorder(fx.Interpreter):
    """Runs a GraphModule and keeps every tensor output, dequantized (float32).

    With ``force``, each paired node's output is replaced by the reference's value (on the
    node's own grid) once it is recorded, so every node runs on the reference's inputs and
    ``codes_off`` counts the codes it computes differently by itself.
    """

    def __init__(self, gm: fx.GraphModule, force: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}
        self.force = force
        self.codes_off: dict[str, tuple[float, int]] = {}  # node: (fraction of codes off, max |LSB|)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if not isinstance(out, torch.Tensor):
            return out
        self.values[n.name] = out.dequantize() if out.is_quantized else out.detach()
        want = None if self.force is None else self.force.get(n.name)
        if want is None or want.shape != out.shape:
            return out
        # the layout too: a kernel can round otherwise on NCHW than on the channels-last int8 conv outputs
        fmt = (torch.channels_last if out.dim() == 4 and not out.is_contiguous()
               and out.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        if not out.is_quantized:
            return want.clone(memory_format=fmt)
        forced = torch.quantize_per_tensor(want, out.q_scale(), out.q_zero_point(), out.dtype).contiguous(
            memory_format=fmt)
        diff = (out.int_repr().to(torch.int32) - forced.int_repr().to(torch.int32)).abs()
        self.codes_off[n.name] = (float((diff > 0).double().mean()), int(diff.max()) if diff.numel() else 0)
        return forced


def _kind(node: fx.Node, mods: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(mods[node.target]).__name__
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[-1]


def _pairs(reference: fx.GraphModule, int8_model: fx.GraphModule) -> dict[str, tuple[str, fx.Node]]:
    """``{int8 node: (reference node holding the same value, reference producer)}``.

    An int8 op that reads a scale attribute pairs with the reference's quantize node of that
    scale; an int8 module pairs by name with the producer of a reference quantize node (its
    quantized output), or with the producer itself when the int8 module outputs float (a
    float op between dequantize and quantize, e.g. SiLU).
    """
    by_scale: dict[str, fx.Node] = {}
    by_src: dict[str, fx.Node] = {}
    for n in reference.graph.nodes:
        if n.op == "call_function" and n.target is torch.quantize_per_tensor and isinstance(n.args[1], fx.Node):
            src = n.args[0]
            if src.op == "placeholder":
                continue  # the network input: quantized the same way in both
            by_scale[str(n.args[1].target)] = n
            by_src[src.meta.get("edgeopt_replaces", src.name)] = n
    pairs: dict[str, tuple[str, fx.Node]] = {}
    for n in int8_model.graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        q = next((by_scale[str(a.target)] for a in n.args
                  if isinstance(a, fx.Node) and a.op == "get_attr" and str(a.target) in by_scale), None)
        if q is None and n.op == "call_module":
            q = by_src.get(n.name)
            if q is not None and n.users and all(u.target is torch.quantize_per_tensor for u in n.users):
                pairs[n.name] = (q.args[0].name, q.args[0])  # float output, quantized by the next node
                continue
        if q is not None:
            pairs[n.name] = (q.name, q.args[0])
    return pairs


def _where(node: fx.Node, int8_node: fx.Node) -> str:
    """The qualified name of the layer a node belongs to: its module, or the module whose
    forward() called the function (``features.1.block.1`` for an SE block's ``mul``)."""
    if int8_node.op == "call_module":
        return str(int8_node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        return str(list(stack.values())[-1][0])
    return ""


def _reason(kind: str, src_kind: str, inputs: list[str], max_lsb: int) -> str:
    gate = any(k in _FIXED_QPARAMS for k in inputs)
    if kind in ("AdaptiveAvgPool2d", "AvgPool2d", "mean", "adaptive_avg_pool2d", "avg_pool2d", "int8_global_avg_pool"):
        return ("the int8 average pool rounds the mean of the integer codes half to even while the reference's "
                "float mean lands exact ties on either side (1 LSB on a pooled value that keeps the feature map's scale)")
    if kind in ("mul", "mul_relu", "int8_mul") and gate:
        return ("fixed-qparams sigmoid/hardsigmoid output (scale 1/256) multiplied into the features: the int8 mul "
                "requantizes the integer product with one float32 multiplier and rounds near-ties otherwise than "
                "the reference's float mul")
    if kind in ("mul", "add", "mul_relu", "add_relu", "cat", "int8_mul"):
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
        # more than rounding, and the located node alone cannot tell which of these it is
        # (timm's MobileNetV3 shows it on a VNNI CPU, where saturation is not expected)
        return (f"the int8 {kind} is off by up to {max_lsb} LSB, more than rounding: 16-bit saturating uint8 x int8 "
                f"sums (CPUs without VNNI, reduce_range off), an overflowing accumulator, or an input the kernel "
                f"receives otherwise than the reference (e.g. a functional mean before it)")
    return f"the int8 {kind} requantizes its int32 accumulator with a float32 multiplier and rounds near-ties otherwise"


def locate_divergence(reference: fx.GraphModule, int8_model: fx.GraphModule, x: torch.Tensor,
                      top: int = 3) -> list[dict[str, Any]]:
    """The int8 nodes that part from the torch.ao reference, worst first.

    Both models run on ``x``; each int8 node paired with a reference quantization point gets
    the SQNR (dB) of its output against the reference's (``sqnr_after_db``) and of its
    inputs (``sqnr_before_db``, the lowest over its paired inputs; None: identical). A
    second run feeds every node the reference's inputs: ``codes_off`` is the fraction of its
    output codes it computes differently by itself, ``max_lsb`` the largest difference. Nodes
    with ``codes_off > 0`` are ranked by their SQNR drop (before minus after, an exact side
    counting as 60 dB, i.e. negligible), then by graph order.

    Args:
        reference: ``convert_to_reference_fx`` of the calibrated ``prepare_fx`` model.
        int8_model: ``convert_fx`` of the same model.
        x: float input images ``[N, C, H, W]`` (a few dozen calibration images).
        top: how many nodes to return.

    Returns:
        Dicts with ``node`` (int8 graph node), ``layer`` (qualified module name: the module,
        or the one whose forward() called the op), ``op`` (module class or function),
        ``sqnr_before_db``, ``sqnr_after_db``, ``codes_off``, ``max_lsb``, ``reason``.

    Example:
        >>> from torch.ao.quantization import get_default_qconfig_mapping
        >>> from torch.ao.quantization.quantize_fx import convert_fx, convert_to_reference_fx, prepare_fx
        >>> import copy
        >>> torch.manual_seed(0) and None
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1)).eval()
        >>> p = prepare_fx(m, get_default_qconfig_mapping("x86"), (torch.randn(1, 3, 4, 4),))
        >>> _ = p(torch.randn(64, 3, 4, 4))
        >>> ref, q = convert_to_reference_fx(copy.deepcopy(p)), convert_fx(p)
        >>> [(d["layer"], d["op"]) for d in locate_divergence(ref, q, torch.randn(64, 3, 4, 4), top=1)]
        [('1', 'AdaptiveAvgPool2d')]
    """
    pairs = _pairs(reference, int8_model)
    with torch.no_grad():
        ref = _Recorder(reference)
        ref.run(x)
        got = _Recorder(int8_model)
        got.run(x)
        forced = _Recorder(int8_model, {n: ref.values[r] for n, (r, _) in pairs.items() if r in ref.values})
        forced.run(x)
    mods = dict(int8_model.named_modules())
    rmods = dict(reference.named_modules())
    after: dict[str, float] = {}
    order: dict[str, int] = {}
    rows = []
    for i, n in enumerate(int8_model.graph.nodes):
        order[n.name] = i
        if n.name not in pairs or n.name not in got.values:
            continue
        rname, src = pairs[n.name]
        want = ref.values.get(rname)
        if want is None or want.shape != got.values[n.name].shape:
            continue
        after[n.name] = sqnr(want, got.values[n.name])
        before = [after[a] for a in _paired_inputs(n, after)]
        off, lsb = forced.codes_off.get(n.name, (0.0, 0))
        if off == 0.0:
            continue
        kind = _kind(n, mods)
        inputs = [_kind(a, mods) for a in n.all_input_nodes if a.op in ("call_module", "call_function")]
        src_kind = _kind(src, rmods) if src.op in ("call_module", "call_function") else src.op
        rows.append({"node": n.name, "layer": _where(src, n), "op": kind,
                     "sqnr_before_db": _db(min(before, default=math.inf)), "sqnr_after_db": _db(after[n.name]),
                     "codes_off": float(f"{off:.3g}"), "max_lsb": lsb, "reason": _reason(kind, src_kind, inputs, lsb)})
    rows.sort(key=lambda r: (_capped(r["sqnr_after_db"]) - _capped(r["sqnr_before_db"]), order[r["node"]]))
    return rows[:top]


def _db(v: float) -> float | None:
    """dB rounded to 0.01; None for identical tensors (inf: not JSON, results.json forbids it)."""
    return None if math.isinf(v) else round(v, 2)


def _capped(db: float | None) -> float:
    return _CAP_DB if db is None else min(db, _CAP_DB)


def _paired_inputs(node: fx.Node, paired: dict[str, float]) -> list[str]:
    """The nearest paired ancestors of ``node`` (through max-pool, flatten, ... that are not)."""
    out, todo, seen = [], list(node.all_input_nodes), set()
    while todo:
        a = todo.pop()
        if a.name in seen or a.op in ("get_attr", "placeholder"):
            continue
        seen.add(a.name)
        if a.name in paired:
            out.append(a.name)
        else:
            todo.extend(a.all_input_nodes)
    return out


def keep_float_patterns(located: list[dict[str, Any]], layers: list[str]) -> list[str]:
    """The ``keep_float`` patterns that would leave the located nodes' layers in float: the
    layer when it is quantizable (a Conv/Linear), else the module around it (the SE block
    of a pool or a gate ``mul``), when that holds quantizable layers.

    Example:
        >>> keep_float_patterns([{"layer": "features.1.block.1.avgpool"}, {"layer": "features.2.block.0.0"}],
        ...                     ["features.1.block.1.fc1", "features.1.block.1.fc2", "features.2.block.0.0"])
        ['features.1.block.1', 'features.2.block.0.0']
    """
    out: list[str] = []
    for d in located:
        layer = d.get("layer") or ""
        if layer in layers:
            pattern = layer
        else:
            parent = layer if any(n.startswith(layer + ".") for n in layers) else layer.rpartition(".")[0]
            if not parent or not any(n.startswith(parent + ".") for n in layers):
                continue
            pattern = parent
        if pattern not in out:
            out.append(pattern)
    return out


def divergence_warning(agreement: float, located: list[dict[str, Any]], keep: list[str] | None = None,
                       keep_agreement: float | None = None, floor: float = 0.99) -> str:
    """The one-line warning for a torch.ao int8 model that agrees with its reference on
    fewer than ``floor`` of the calibration images: where the outputs part, why, and what
    helps (``keep`` float, only when that was measured to reach the floor).

    Example:
        >>> d = {"layer": "features.4.block.2", "op": "mul", "sqnr_before_db": 35.0, "sqnr_after_db": 9.0,
        ...      "codes_off": 0.004, "max_lsb": 1, "reason": "requantized mul: ..."}
        >>> w = divergence_warning(0.508, [d], ["features.4.block.2"], 0.995)
        >>> w[w.index("the outputs"):w.index(": requantized")]
        'the outputs part at features.4.block.2 (mul, SQNR 35.0 -> 9.0 dB, 0.4 % of its codes off by up to 1 LSB)'
        >>> w[w.index("; keeping"):]
        "; keeping them in float brings the agreement to 99.5 %: keep_float=['features.4.block.2'] (--keep-float features.4.block.2), or use --backend onnxruntime"
    """
    head = (f"the torch.ao reference model agrees with the int8 model on only {100 * agreement:.1f} % of "
            f"calibration images (top-1)")
    if not located:
        return head + ("; no int8 node computes otherwise than its reference node by itself on these images, so "
                       "the gap comes from the model amplifying float rounding: use --backend onnxruntime for a "
                       "checked int8 artifact")
    first = located[0]
    where = first["layer"] or first["node"]
    text = (f"{head}: the outputs part at {where} ({first['op']}, SQNR {_fmt(first['sqnr_before_db'])} -> "
            f"{_fmt(first['sqnr_after_db'])} dB, {100 * first['codes_off']:.2g} % of its codes off by up to "
            f"{first['max_lsb']} LSB): {first['reason']}")
    more = [f"{d['layer'] or d['node']} ({d['op']})" for d in located[1:]]
    if more:
        text += f"; also at {', '.join(more)}"
    if keep and keep_agreement is not None and keep_agreement >= floor:
        flags = " ".join(f"--keep-float {p}" for p in keep)
        text += (f"; keeping them in float brings the agreement to {100 * keep_agreement:.1f} %: "
                 f"keep_float={keep!r} ({flags}), or use --backend onnxruntime")
    else:
        tried = (f" (keeping {', '.join(keep)} in float was tried: {100 * keep_agreement:.1f} %)"
                 if keep and keep_agreement is not None else "")
        text += (f"; tiny differences that this model amplifies, so the agreement check is weaker than usual"
                 f"{tried}: use --backend onnxruntime for a checked int8 artifact")
    return text


def _fmt(db: float | None) -> str:
    return "inf" if db is None else f"{db:.1f}"
