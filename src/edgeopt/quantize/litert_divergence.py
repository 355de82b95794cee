"""Where a litert ``.tflite`` departs from its Q/DQ reference, op by op.

When the file's top-1 agreement with its fake-quant reference is below the floor, the
warning should say why. This module compares every int8 tensor the file computes with the
reference's matching ``quantize_per_tensor`` node, *each op fed the file's own inputs*
(the reference graph is run with every matched tensor replaced by the file's value), so an
op's difference is its own and not one carried from earlier layers:

- the file's tensors come from XNNPACK, the kernels edgeopt's litert runner and the
  agreement check use: every int8 op output is made a model output (the flatbuffer is
  rewritten in memory), which the delegate then writes out;
- a file tensor matches the reference quantize node with the same scale, zero point and
  shape (NHWC read as NCHW) whose value, computed from the file's inputs, is closest
  (another tensor on the same grid, e.g. a shuffled channel half, is refused);
- an op *departs beyond rounding* when, given the same inputs, more than 5 % of its values
  or any value by more than one int8 step differ (a correct rounding of the same value
  differs only at ties: measured 0-3.1 % on MobileNetV3, EfficientNet-B0, RegNetY-400MF).

When no op departs, the disagreement is rounding noise that the model amplifies, and the
clause says so with numbers measured on the model itself: how often the one-step
differences found, replayed as random flips at the same rates, change the reference's own
top-1, and how often TFLite's built-in kernels change the same file's top-1 against XNNPACK
(on 32 calibration images: MobileNetV3-Large from timm on CIFAR-10, 24 and 21 of 32;
EfficientNet-B0, 13 and 11 of 32). The ``requantized`` list names int8 tensors the file
computes on a grid the reference has no quantize for (ShuffleNetV2: a branch's conv output
written on the concat's grid, the shuffled tensor requantized twice).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgeopt.errors import brief
from edgeopt.quantize.litert_file import file_graph, file_values, run_file

#: an op departs when more than this fraction of its values is off by one step
STEP_RATE = 0.05
#: file ops that move or pad int8 values without requantizing them
_LAYOUT_OPS = {"PAD", "PADV2", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "MAX_POOL_2D",
               "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "GATHER", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE"}


def _as_nchw(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The file's tensor ``a`` (NHWC when 4-D) laid out as the reference's ``shape`` (NCHW, or
    flattened from NCHW), or None when it cannot be that tensor."""
    if a.ndim == 4:
        a = a.transpose(0, 3, 1, 2)
    if a.shape == tuple(shape):
        return a
    return a.reshape(shape) if a.size == int(np.prod(shape)) and a.shape[0] == shape[0] else None


class _Run(torch.fx.Interpreter):
    """Runs the reference; records each quantize node's int8 output, and returns the file's
    value instead where ``forced`` has one, or where ``match(node, value)`` finds one (so each
    op sees the file's inputs)."""

    def __init__(self, graph: Any, forced: dict[str, torch.Tensor] | None = None, noise: Any = None,
                 match: Any = None) -> None:
        super().__init__(graph)
        self.forced, self.noise, self.match, self.seen = forced if forced is not None else {}, noise, match, {}

    def run_node(self, node: Any) -> Any:
        out = super().run_node(node)
        if node.op == "call_function" and node.target == torch.ops.quantized_decomposed.quantize_per_tensor.default:
            self.seen[node.name] = out
            if node.name not in self.forced and self.match is not None:
                found = self.match(node, out)
                if found is not None:
                    self.forced[node.name] = found
            if node.name in self.forced:
                return self.forced[node.name]
            if self.noise is not None:
                return self.noise(node.name, out)
        return out


def _layer(node: Any) -> str:
    """The model's layer (qualified name) whose output the quantize ``node`` rounds: the nearest
    producer that sits in a submodule (a functional ``relu`` after ``conv2`` names ``conv2``)."""
    todo, seen = [node.args[0]], set()
    while todo:
        n = todo.pop(0)
        if not isinstance(n, torch.fx.Node) or n in seen or n.op != "call_function":
            continue
        seen.add(n)
        stack = n.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        if path:
            return str(path)
        if "quantize" not in getattr(n.target, "__name__", ""):
            todo.extend(a for a in n.args if isinstance(a, torch.fx.Node))
    return ""


def _short(name: str) -> str:
    last = name.split(";")[0].rstrip("/").split("/")[-1]
    return last.rsplit(".", 1)[-1] or name[-40:]


def _ref_chain(q: Any) -> str:
    """The aten ops between the dequantize nodes feeding ``q`` and ``q``, in graph order."""
    order = {n: i for i, n in enumerate(q.graph.nodes)}
    seen, todo, ops = set(), [q.args[0]], []
    while todo:
        n = todo.pop()
        if not isinstance(n, torch.fx.Node) or n in seen or n.op != "call_function":
            continue
        seen.add(n)
        name = getattr(n.target, "__name__", str(n.target))
        if "quantize" in name:  # (de)quantize: the segment starts there
            continue
        ops.append(n)
        todo.extend(a for a in n.args if isinstance(a, torch.fx.Node))
    return " > ".join(getattr(n.target, "__name__", str(n.target)).split(".")[0] for n in sorted(ops, key=order.get))


def _file_chain(op: dict[str, Any], producers: dict[int, dict[str, Any]], matched: set[int],
                tensors: dict[int, dict[str, Any]]) -> str:
    """The file ops from the matched int8 inputs of ``op`` to ``op`` (float ones marked)."""
    chain, todo = {}, [op]
    while todo and len(chain) < 8:
        o = todo.pop()
        if o["index"] in chain:
            continue
        chain[o["index"]] = o
        todo.extend(producers[t] for t in o["inputs"] if t in producers and t not in matched)
    names = []
    for o in sorted(chain.values(), key=lambda o: o["index"]):
        dt = np.dtype(tensors[o["outputs"][0]]["dtype"]).name
        names.append(o["op_name"] + ("" if dt == "int8" else f" ({dt})"))
    return " > ".join(names)


#: activations the converter fuses into the op before them when their output keeps its input's grid
_CLAMPS = {"hardtanh", "hardtanh_", "relu", "relu_", "clamp", "clamp_", "clamp_min", "clamp_min_", "relu6"}


def fused_activation_inputs(graph: Any) -> set[str]:
    """Names of the reference's quantize nodes that round an op's output *before* a clamping
    activation whose own quantize has the same grid (``conv -> q -> dq -> hardtanh -> q``).

    The converter folds both into one int8 op with a fused activation (CONV_2D + RELU6), so
    the file has no tensor for the first one; matched against the fused output (same grid and
    shape, and close where the values are positive) it would report the activation's zeros
    as a departure (timm efficientnet_lite0: 47.7 % of values "off", up to 131 steps).
    """
    q = torch.ops.quantized_decomposed.quantize_per_tensor.default
    out = set()
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target != q or not node.users:
            continue
        fused = True
        for dq in node.users:
            acts = list(dq.users)
            if (getattr(dq.target, "__name__", "").split(".")[0] != "dequantize_per_tensor" or len(acts) != 1
                    or getattr(acts[0].target, "__name__", "").split(".")[0] not in _CLAMPS
                    or not any(u.target == q and u.args[1:3] == node.args[1:3] for u in acts[0].users)):
                fused = False
                break
        if fused:
            out.add(node.name)
    return out


class _Matcher:
    """Finds the file tensor a reference quantize node computes, while the reference runs fed
    the file's values: the unused int8 op output with the same scale, zero point and shape
    (NHWC read as NCHW) closest to the node's value. Another tensor on the same grid (a
    shuffled half, a concat's other input) differs by about its spread and is refused."""

    def __init__(self, tensors: dict[int, dict[str, Any]], ops: list[dict[str, Any]],
                 fvals: dict[int, np.ndarray], skip: set[str] | None = None) -> None:
        self.fvals, self.found, self.skip = fvals, {}, skip or set()
        self.by_grid: dict[tuple[float, int], list[dict[str, Any]]] = {}
        for op in ops:
            t = op["outputs"][0]
            if t in fvals and np.dtype(tensors[t]["dtype"]) == np.int8:
                s, z = tensors[t]["quantization"]
                self.by_grid.setdefault((float(np.float32(s)), int(z)), []).append(op)

    def __call__(self, node: Any, value: torch.Tensor) -> torch.Tensor | None:
        if node.name in self.skip:  # the file fuses the activation after it: no tensor of its own
            return None
        r = value.numpy().astype(np.int32)
        best = None
        for op in self.by_grid.get((float(np.float32(node.args[1])), int(node.args[2])), []):
            if op["index"] in self.found:
                continue
            f = _as_nchw(self.fvals[op["outputs"][0]], r.shape)
            if f is None:
                continue
            d = float(np.abs(r - f.astype(np.int32)).mean())
            if d <= 0.5 * max(float(np.abs(r - r.mean()).mean()), 1.0) and (best is None or d < best[1]):
                best = (op, d, f)
        if best is None:
            return None
        self.found[best[0]["index"]] = node
        return torch.from_numpy(np.ascontiguousarray(best[2]))


def locate_divergence(graph: Any, content: bytes, images: torch.Tensor, *, op_images: int = 4,
                      noise_images: int = 32, seed: int = 0) -> dict[str, Any]:
    """Compare a litert file with its Q/DQ reference ``graph`` op by op (see the module doc).

    Args:
        graph: the converted Q/DQ graph module (batch 1) the file was lowered from.
        content: the ``.tflite`` bytes.
        images: a few preprocessed images (N, C, H, W); the first ``op_images`` are compared
            op by op, the first ``noise_images`` measure how much the one-step differences
            found move the reference's top-1 when replayed as random flips.

    Returns:
        ``{"compared", "images", "departures": [{"op", "index", "tensor", "layer", "rate",
        "max_steps", "bias", "file", "reference"}], "requantized": [...], "sensitivity",
        "clause"}``; ``clause`` is the text for the agreement warning ("" when nothing was
        compared).
    """
    tensors, ops = file_graph(content)
    producers = {t: o for o in ops for t in o["outputs"]}
    wanted = [o["outputs"][0] for o in ops if np.dtype(tensors[o["outputs"][0]]["dtype"]) == np.int8]
    xs = images[:op_images]
    stats: dict[int, list[float]] = {}
    matches: dict[int, Any] = {}
    with torch.no_grad():
        for k, x in enumerate(xs.split(1)):
            fvals = file_values(content, x, wanted)
            if k == 0:
                matcher = _Matcher(tensors, ops, fvals, fused_activation_inputs(graph))
                run = _Run(graph, match=matcher)
                run.run(x)
                matches = matcher.found
                if not matches:
                    return {"compared": 0, "images": 0, "departures": [], "clause": ""}
                shapes = {n.name: tuple(run.seen[n.name].shape) for n in matches.values()}
            else:
                run = _Run(graph, {n.name: torch.from_numpy(np.ascontiguousarray(
                    _as_nchw(fvals[ops[i]["outputs"][0]], shapes[n.name]))) for i, n in matches.items()})
                run.run(x)
            for i, n in matches.items():
                d = run.seen[n.name].to(torch.int32) - run.forced[n.name].to(torch.int32)
                s = stats.setdefault(i, [0.0, 0.0, 0.0, 0.0])
                s[0] += d.numel()
                s[1] += float((d != 0).sum())
                s[2] = max(s[2], float(d.abs().max()))
                s[3] += float(d.sum())
    matched = {ops[i]["outputs"][0] for i in matches}
    rows = []
    for i, n in sorted(matches.items()):
        total, off, worst, signed = stats[i]
        t = tensors[ops[i]["outputs"][0]]
        rows.append({"op": ops[i]["op_name"], "index": i, "tensor": t["name"], "layer": _layer(n), "node": n.name,
                     "rate": off / total, "max_steps": int(worst), "bias": signed / total,
                     "file": _file_chain(ops[i], producers, matched, tensors), "reference": _ref_chain(n)})
    departures = [r for r in rows if r["max_steps"] > 1 or r["rate"] > STEP_RATE]
    requantized = []
    for o in ops:
        t = o["outputs"][0]
        if o["index"] in matches or o["op_name"] in _LAYOUT_OPS or t not in tensors:
            continue
        q = tensors[t]["quantization"]
        ins = [tensors[i]["quantization"] for i in o["inputs"] if i in tensors
               and np.dtype(tensors[i]["dtype"]) == np.int8]
        if np.dtype(tensors[t]["dtype"]) == np.int8 and ins and q not in ins:
            requantized.append({"op": o["op_name"], "index": o["index"], "tensor": tensors[t]["name"],
                                "scale": float(q[0]), "zero_point": int(q[1])})
    out: dict[str, Any] = {"compared": len(rows), "images": len(xs), "departures": departures[:8],
                           "requantized": requantized[:8]}
    if departures:
        out["clause"] = _departure_clause(departures, len(rows), len(xs))
    else:
        flips = {r["node"]: ((r["rate"] + r["bias"]) / 2, (r["rate"] - r["bias"]) / 2) for r in rows}
        out["sensitivity"] = sensitivity(graph, content, images[:noise_images], flips, seed)
        out["clause"] = _noise_clause(rows, len(xs), out["sensitivity"])
    if requantized:
        r = requantized[0]
        out["clause"] += (f"; the file also requantizes {len(requantized)} tensor(s) the reference has no quantize "
                          f"for (first: {r['op']} '{_short(r['tensor'])}', scale {r['scale']:.4g})")
    return out


#: what a file op computes that the reference's float op between dequantize and quantize does not say
_NOTES = {"MEAN": "XNNPACK's int8 MEAN rounds sum(q) / N half to even on the raw int8 values, the reference "
                  "rounds the float mean of the dequantized values (ties go elsewhere)"}


def _departure_clause(departures: list[dict[str, Any]], compared: int, images: int) -> str:
    d = departures[0]
    where = f" at layer '{d['layer']}'" if d["layer"] else ""
    more = f" ({len(departures)} of the {compared} int8 ops compared depart)" if len(departures) > 1 else ""
    requants = d["file"].split(" > ").count("QUANTIZE")
    return (f"; the first of the file's ops that departs from the reference beyond rounding is {d['op']}{where} "
            f"(tensor '{_short(d['tensor'])}'){more}: fed the file's own inputs, the reference's int8 output "
            f"differs on {100 * d['rate']:.1f} % of its values (up to {d['max_steps']} step(s), mean "
            f"{d['bias']:+.2f}) on {images} calibration image(s); the file computes {d['file']} with "
            f"XNNPACK's int8 kernels, the reference {d['reference'] or 'it'} in float between dequantize and quantize"
            + (f" ({_NOTES[d['op']]})" if d["op"] in _NOTES else "")
            + (f" (the file requantizes the values {requants} times on the way, rounding each time; the reference "
               f"rounds once)" if requants > 1 else ""))


def _noise_clause(rows: list[dict[str, Any]], images: int, sens: dict[str, Any]) -> str:
    worst = max(rows, key=lambda r: r["rate"])
    where = f" at '{worst['layer']}'" if worst["layer"] else ""
    n = sens["images"]
    out = (f"; what it does not model is XNNPACK's exact rounding, for no op of the file departs from the reference "
           f"beyond it: fed the file's own inputs, each of "
           f"its {len(rows)} int8 ops matches the reference to within one step on {images} calibration image(s) "
           f"(the most one-step differences: {100 * worst['rate']:.1f} % of the values of {worst['op']}{where}); "
           f"replaying these one-step differences as random flips at the same rates changes the reference's own "
           f"top-1 on {sens['noise_flips']} of {n} images, and TFLite's built-in kernels change this same file's "
           f"top-1 against XNNPACK on {sens['builtin_flips']} of {n}")
    if sens["noise_flips"] or sens["builtin_flips"]:
        out += (f": rounding noise alone moves this model's top-1 (the file's logits differ from the reference's by a "
                f"mean {sens['mean_abs_diff']:.3g}; the reference's median top-2 margin is "
                f"{sens['median_margin']:.3g}), and no fake-quant reference short of a bit-exact emulation of "
                f"XNNPACK would reach the floor")
    return out


def sensitivity(graph: Any, content: bytes, images: torch.Tensor, flips: dict[str, tuple[float, float]],
                seed: int = 0) -> dict[str, Any]:
    """How much one-step rounding differences move the model's top-1, on ``images``.

    Args:
        flips: reference quantize node -> (probability of +1, probability of -1) step, the
            differences measured op by op (:func:`locate_divergence`), replayed at random.

    Returns ``{"images", "noise_flips", "builtin_flips", "mean_abs_diff", "median_margin"}``:
    the images whose reference top-1 changes under the replayed flips; those whose file top-1
    differs between XNNPACK and TFLite's built-in kernels; the mean |file - reference| logit
    difference; the reference's median top-1 minus top-2 logit.
    """
    gen = torch.Generator().manual_seed(seed)

    def noise(name: str, q: torch.Tensor) -> torch.Tensor:
        up, down = flips.get(name, (0.0, 0.0))
        if up <= 0 and down <= 0:
            return q
        u = torch.rand(q.shape, generator=gen)
        step = (u < up).to(torch.int16) - ((u >= up) & (u < up + down)).to(torch.int16)
        return (q.to(torch.int16) + step).clamp(-128, 127).to(q.dtype)

    with torch.no_grad():
        ref = torch.cat([_first(graph(x)) for x in images.split(1)]).float().numpy().reshape(len(images), -1)
        noisy = torch.cat([_first(_Run(graph, noise=noise).run(x)) for x in images.split(1)]).float().numpy()
    xnn, builtin = run_file(content, images, True), run_file(content, images, False)
    top2 = np.sort(ref, axis=1)[:, -2:]
    return {"images": len(images),
            "noise_flips": int((noisy.reshape(len(images), -1).argmax(1) != ref.argmax(1)).sum()),
            "builtin_flips": int((xnn.argmax(1) != builtin.argmax(1)).sum()),
            "mean_abs_diff": float(np.abs(xnn - ref).mean()),
            "median_margin": float(np.median(top2[:, 1] - top2[:, 0]))}


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class DivergenceLocator(dict):
    """A backend's ``meta["divergence"]``: a plain dict in the sidecar (what was found, or
    that it did not run) that :meth:`locate` fills on demand. ``quantize`` calls it only
    when the agreement is below the floor (it costs a few reference and file runs)."""

    def __init__(self, graph: Any, content: bytes, images: torch.Tensor) -> None:
        super().__init__(status="not run: it runs only when the file's top-1 agreement with its reference is "
                                "below the floor")
        self._args: tuple[Any, bytes, torch.Tensor] | None = (graph, content, images.detach().clone())

    def locate(self) -> str:
        """The clause for the agreement warning ("" when the search fails: it never raises)."""
        if self._args is None:
            return str(self.get("clause", ""))
        graph, content, images = self._args
        self._args = None
        try:
            found = locate_divergence(graph, content, images)
        except Exception as exc:  # noqa: BLE001 - a failed diagnosis is no clause, never an error
            self.clear()
            self["status"] = f"failed: {type(exc).__name__}: {brief(exc)}"
            return ""
        self.clear()
        self.update(status="ran", **found)
        return str(found.get("clause", ""))
