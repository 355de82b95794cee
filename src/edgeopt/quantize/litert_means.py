"""Make the litert reference's global means round the way the file's int8 MEAN does.

A squeeze-excite block (MobileNetV3, EfficientNet, RegNetY, GhostNet) pools its features
with ``x.mean((2, 3))`` or ``adaptive_avg_pool2d(x, 1)``. litert-torch gives the pool's
output the qparams of its input, and the converter lowers it to an int8 ``MEAN`` whose
input and output share one scale and zero point. XNNPACK, which runs the file, computes it
as ``round_half_even(sum(q) / N)`` on the *raw* int8 values ``q`` (measured: bit-exact on
all 11 int8 MEANs of EfficientNet-B0, N = 4 to 256, on calibration images). The Q/DQ
reference averages the dequantized floats and quantizes the result: the same value, but
its ties (``sum(q) / N`` ending in .5, a quarter of the values when a 2x2 map is pooled)
go to the even integer of ``q - zero_point`` or fall either side through float32 error. On
EfficientNet-B0 (CIFAR-size input, SE pools over 2x2 maps) 18-23 % of the pooled values of
the last SE blocks were one step apart from the file's, fed the file's own inputs; after
this pass none are. TFLite's built-in kernel (``xnnpack=False``) differs again: it
truncates ``sum(q) / N`` toward zero for N = 4 (35 % of those values one step up from
XNNPACK's); the reference models XNNPACK, the runtime edgeopt measures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_MEAN_TARGETS = ("mean.dim", "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default")


def xnnpack_global_mean(x: torch.Tensor, scale: float, zero_point: int, keepdim: bool = True) -> torch.Tensor:
    """The mean over H and W of ``x`` (N, C, H, W), an int8 tensor dequantized with ``scale``
    and ``zero_point``, rounded as XNNPACK's int8 MEAN rounds it: ``round_half_even(sum(q) / N)``
    on the raw int8 values, then dequantized (float64 inside: sums of int8 are exact)."""
    q = torch.round(x.double() / scale) + zero_point
    total = q.sum((2, 3), keepdim=keepdim)
    n = x.shape[2] * x.shape[3]
    return ((torch.round(total / n) - zero_point) * scale).to(x.dtype)


def _is_global_pool(node: Any) -> tuple[bool, bool]:
    """(whether ``node`` averages over the whole H x W of a 4-D tensor, keepdim)."""
    name = getattr(node.target, "__name__", "")
    if name == "mean.dim":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
        if not isinstance(dims, (list, tuple)) or sorted(int(d) % 4 for d in dims) != [2, 3]:
            return False, False
        return True, keep
    size = node.args[1] if len(node.args) > 1 else None
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    return size == [1, 1], True


def file_means(content: bytes) -> dict[tuple[float, int], int]:
    """The int8 MEAN ops of a ``.tflite`` whose input and output share one scale and zero
    point: ``{(scale, zero_point): count}``."""
    from edgeopt.quantize.litert_file import file_graph

    tensors, ops = file_graph(content)
    found: dict[tuple[float, int], int] = {}
    for op in ops:
        if op["op_name"] != "MEAN":
            continue
        i, o = tensors[op["inputs"][0]], tensors[op["outputs"][0]]
        if np.dtype(i["dtype"]) != np.int8:
            continue
        if i["quantization"] != o["quantization"]:
            continue
        key = (float(i["quantization"][0]), int(i["quantization"][1]))
        found[key] = found.get(key, 0) + 1
    return found


def means_rounded_like_the_file(graph: Any, content: bytes) -> list[dict[str, Any]]:
    """Replace each global mean of the reference that the file runs as an int8 MEAN (same
    scale and zero point in and out) by :func:`xnnpack_global_mean` (in place).

    A pool is replaced when its input is ``dequantize_per_tensor(q, s, z)`` and the file has
    an int8 MEAN with input and output qparams ``(s, z)``; the quantize that follows it in
    the graph then leaves the value as it is. Pools over a 1x1 map (the converter deletes
    them) and pools the file runs in float or with its own output grid are left alone.

    Returns:
        ``[{"node", "scale", "zero_point"}]`` for the pools replaced.
    """
    qd = torch.ops.quantized_decomposed
    means = file_means(content)
    if not means:
        return []
    done = []
    for n in list(graph.graph.nodes):
        if n.op != "call_function" or getattr(n.target, "__name__", "") not in _MEAN_TARGETS:
            continue
        if getattr(n.target, "namespace", "") != "aten":
            continue
        x = n.args[0]
        if not (isinstance(x, torch.fx.Node) and x.target == qd.dequantize_per_tensor.default
                and isinstance(x.args[1], float)):
            continue
        ok, keep = _is_global_pool(n)
        shape = getattr(x.meta.get("val"), "shape", None)
        if not ok or (shape is not None and (len(shape) != 4 or int(shape[2]) * int(shape[3]) <= 1)):
            continue
        s, z = float(x.args[1]), int(x.args[2])
        if not any(abs(fs - s) <= 1e-6 * s and fz == z for fs, fz in means):
            continue
        with graph.graph.inserting_after(n):
            new = graph.graph.call_function(xnnpack_global_mean, (x, s, z, keep))
        new.meta = dict(n.meta)
        n.replace_all_uses_with(new)
        graph.graph.erase_node(n)
        done.append({"node": n.name, "scale": s, "zero_point": z})
    if done:
        graph.graph.lint()
        graph.recompile()
    return done
