"""Where and why a torch.ao int8 model parts from its fake-quant reference.

Both GraphModules come from the same calibrated ``prepare_fx`` graph: the reference
(``convert_to_reference_fx``) runs float ops between quantize/dequantize pairs, the int8
model (``convert_fx``) the engine's kernels. Each quantization point of the reference is a
``quantize_per_tensor`` whose scale attribute (``features_1_block_1_scale_0``) the int8 op
that replaced it still reads, or whose producer the int8 graph still calls by name
(``features.1.block.0.0``), or a function it calls as traced (``cat_1``, ``mean``) by name:
that is how nodes are paired.

:func:`locate_divergence` runs both on the same images and measures, for each paired node,
the SQNR (dB) of the int8 output against the reference's, before (its inputs) and after
(its output), and whether the node itself computes something else: fed the reference's own
inputs, how many of its output codes differ. Nodes that differ themselves are ranked by
their SQNR drop; their op type and what was measured around them name the reason: an
input that already differs (from an op with no reference node to compare at), an input
the int8 graph leaves on its producer's grid (an ``Identity`` before a cat: the int8 graph
has no quantization point there, so the cat requantizes), and for a layer off by more than
rounding whether this CPU has VNNI (without it fbgemm's 16-bit sums can saturate).

The measured causes (SE blocks' global average pool, functional mean and gate ``mul``,
GhostNet's cat) and the reference that quantizes and rounds them as the kernels do are in
:mod:`edgeopt.quantize.int8_rounding`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx, nn

from edgeopt.quantize.math import sqnr
from edgeopt.quantize.torch_divergence_causes import cpu_has_vnni, reason

#: an SQNR above this counts as exact when drops are ranked: 60 dB is ~1/8 LSB of an 8-bit
#: full-scale signal (ideal 8-bit quantization gives ~48 dB), a few codes off by 1
_CAP_DB = 60.0


# -- pairing and recording ------------------------------------------------------------------------
class _Recorder(fx.Interpreter):
    """Runs a GraphModule and keeps every tensor output, dequantized (float32).

    With ``force``, each paired node's output is replaced by the reference's value (on the
    node's own grid) once it is recorded, so every node runs on the reference's inputs and
    ``codes_off`` counts the codes it computes differently by itself. A node whose int8
    output is on another grid than the reference's quantization point after it (``grids``:
    the reference's scale and zero point) is not forced: the int8 graph does not quantize
    there (an ``Identity`` before a cat keeps its producer's scale), so it computes nothing
    itself; it is recorded in ``regrid`` and the next op's requantization is measured instead.
    """

    def __init__(self, gm: fx.GraphModule, force: dict[str, torch.Tensor] | None = None,
                 grids: dict[str, tuple[float, int]] | None = None) -> None:
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}
        self.qparams: dict[str, tuple[float, int]] = {}
        self.force = force
        self.grids = grids or {}
        self.codes_off: dict[str, tuple[float, int]] = {}  # node: (fraction of codes off, max |LSB|)
        self.regrid: dict[str, dict[str, Any]] = {}  # node: its int8 grid and the reference's

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if not isinstance(out, torch.Tensor):
            return out
        self.values[n.name] = out.dequantize() if out.is_quantized else out.detach()
        if out.is_quantized and out.qscheme() == torch.per_tensor_affine:
            self.qparams[n.name] = (float(out.q_scale()), int(out.q_zero_point()))
        want = None if self.force is None else self.force.get(n.name)
        if want is None or want.numel() != out.numel():
            return out
        want = want.reshape(out.shape)  # a mean the int8 graph keeps 4-D (keepdim_means): same values
        grid = self.grids.get(n.name)
        if out.is_quantized and grid is not None and n.name in self.qparams and not (
                math.isclose(self.qparams[n.name][0], grid[0], rel_tol=1e-6) and self.qparams[n.name][1] == grid[1]):
            self.regrid[n.name] = {"int8": self.qparams[n.name], "reference": grid}
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


def _grids(reference: fx.GraphModule, pairs: dict[str, tuple[str, fx.Node]]) -> dict[str, tuple[float, int]]:
    """``{int8 node: (scale, zero point)}`` of the reference quantize node it pairs with."""
    nodes = {n.name: n for n in reference.graph.nodes}
    out: dict[str, tuple[float, int]] = {}
    for name, (rname, _) in pairs.items():
        q = nodes.get(rname)
        if q is None or q.target is not torch.quantize_per_tensor:
            continue
        attrs = q.args[1:3]
        if all(isinstance(a, fx.Node) and a.op == "get_attr" for a in attrs):
            out[name] = (float(getattr(reference, attrs[0].target)), int(getattr(reference, attrs[1].target)))
    return out


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
    float op between dequantize and quantize, e.g. SiLU); a function the int8 graph calls
    as it was traced (``torch.cat``, ``x.mean``) pairs by name and op.
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
        elif q is None and n.name in by_src:
            # a function convert_fx left in place (torch.cat, x.mean): the same name and op
            src = by_src[n.name].args[0]
            if src.meta.get("edgeopt_replaces_target", src.target) == n.target:
                q = by_src[n.name]
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


def _input_off(n: fx.Node, src: fx.Node, got: _Recorder, ref: _Recorder) -> tuple[float, int] | None:
    """How the first tensor input of int8 node ``n`` in the forced run differs from its
    reference node's: (fraction of codes off, max LSB), None when equal or not comparable."""
    a = next((i for i in n.all_input_nodes if i.op != "get_attr"), None)
    b = next((i for i in src.all_input_nodes if i.op != "get_attr"), None)
    if a is None or b is None or a.name not in got.qparams:
        return None
    mine, theirs = got.values.get(a.name), ref.values.get(b.name)
    if mine is None or theirs is None or mine.shape != theirs.shape:
        return None
    lsb = torch.round((mine - theirs).abs() / got.qparams[a.name][0])
    if not bool((lsb > 0).any()):
        return None
    return float((lsb > 0).double().mean()), int(lsb.max())


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
        ``sqnr_before_db``, ``sqnr_after_db``, ``codes_off``, ``max_lsb``, ``reason``; and
        where measured, ``input_codes_off`` (the node's own input already differs from the
        reference's: the cause is before it) and ``regrid_inputs`` (inputs the int8 graph
        leaves on their producer's grid where the reference quantizes them to another:
        ``{"node", "int8": [scale, zero point], "reference": [...]}``).

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
        forced = _Recorder(int8_model, {n: ref.values[r] for n, (r, _) in pairs.items() if r in ref.values},
                           _grids(reference, pairs))
        forced.run(x)
    mods = dict(int8_model.named_modules())
    rmods = dict(reference.named_modules())
    after: dict[str, float] = {}
    order: dict[str, int] = {}
    rows = []
    vnni = cpu_has_vnni()
    nodes = {m.name: m for m in int8_model.graph.nodes}
    for i, n in enumerate(int8_model.graph.nodes):
        order[n.name] = i
        if n.name not in pairs or n.name not in got.values:
            continue
        rname, src = pairs[n.name]
        want = ref.values.get(rname)
        if want is None or want.numel() != got.values[n.name].numel():
            continue
        want = want.reshape(got.values[n.name].shape)
        after[n.name] = sqnr(want, got.values[n.name])
        paired_in = _paired_inputs(n, after)
        before = [after[a] for a in paired_in]
        off, lsb = forced.codes_off.get(n.name, (0.0, 0))
        if off == 0.0:
            continue
        kind = _kind(n, mods)
        inputs = [_kind(a, mods) for a in n.all_input_nodes if a.op in ("call_module", "call_function")]
        src_kind = _kind(src, rmods) if src.op in ("call_module", "call_function") else src.op
        regrid = [{"node": a, "layer": _where(pairs[a][1], nodes[a]), "op": _kind(nodes[a], mods), **forced.regrid[a]}
                  for a in paired_in if a in forced.regrid]
        input_off = None
        measured = _input_off(n, src, forced, ref) if kind != "quantize_per_tensor" and not regrid else None
        if measured is not None:
            producer = _producer(next(m for m in n.all_input_nodes if m.op != "get_attr"))
            input_off = {"codes_off": measured[0], "max_lsb": measured[1], "from": f"{_kind(producer, mods)} "
                         f"({_where(producer, producer) or producer.name})"}
        row = {"node": n.name, "layer": _where(src, n), "op": kind,
               "sqnr_before_db": _db(min(before, default=math.inf)), "sqnr_after_db": _db(after[n.name]),
               "codes_off": float(f"{off:.3g}"), "max_lsb": lsb,
               "reason": reason(kind, src_kind, inputs, lsb, input_off, regrid, vnni)}
        if input_off:
            row["input_codes_off"] = float(f"{input_off['codes_off']:.3g}")
        if regrid:
            row["regrid_inputs"] = [{"node": r["node"], "int8": list(r["int8"]), "reference": list(r["reference"])}
                                    for r in regrid]
        rows.append(row)
    rows.sort(key=lambda r: (_capped(r["sqnr_after_db"]) - _capped(r["sqnr_before_db"]), order[r["node"]]))
    return rows[:top]


#: ops that only reshape or re-type a tensor: a difference comes from before them
_PASS_ON = ("squeeze", "unsqueeze", "view", "reshape", "flatten", "contiguous", "dequantize", "Flatten", "Identity")


def _producer(node: fx.Node) -> fx.Node:
    """The op behind ``node`` that computes values (through squeeze, flatten, ...)."""
    for _ in range(16):
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if node.op == "call_module":
            name = type(node.graph.owning_module.get_submodule(node.target)).__name__
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if name not in _PASS_ON or not inputs:
            break
        node = inputs[0]
    return node


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
