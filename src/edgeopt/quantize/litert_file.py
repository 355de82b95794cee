"""Read a litert ``.tflite`` the way its XNNPACK run computes it: its ops and tensors, the
value of any int8 tensor on one image, its logits.

The interpreter lists a file's ops only without delegates (XNNPACK shows them as one
DELEGATE); ``experimental_preserve_all_tensors`` keeps intermediate tensors only for the
built-in kernels, which round some ops differently from XNNPACK (int8 MEAN over 2x2 maps:
it truncates, XNNPACK rounds half to even). To read XNNPACK's values, :func:`expose` makes
the wanted tensors model outputs (the flatbuffer is rewritten in memory), which the
delegate then writes out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _interpreter(content: bytes, xnnpack: bool, **kw: Any) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not xnnpack:
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_content=content, num_threads=1, **kw)
    it.allocate_tensors()
    return it


def file_graph(content: bytes) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """The tensors (index -> details) and the ops (execution order) of a ``.tflite``."""
    it = _interpreter(content, xnnpack=False)  # with XNNPACK the delegated ops are listed as DELEGATE
    return {d["index"]: d for d in it.get_tensor_details()}, list(it._get_ops_details())


def _quantize_input(it: Any, x: torch.Tensor) -> tuple[int, np.ndarray]:
    d = it.get_input_details()[0]
    s, z = d["quantization"]
    a = x.detach().float().numpy()
    if np.dtype(d["dtype"]) == np.int8:
        a = np.clip(np.round(a / s) + z, -128, 127).astype(np.int8)
    return d["index"], a


def expose(content: bytes, tensors: list[int]) -> bytes:
    """``content`` with ``tensors`` added to the model's outputs (so a delegate writes them)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    sub = model.subgraphs[0]
    sub.outputs = list(sub.outputs) + [t for t in tensors if t not in set(sub.outputs)]
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def file_values(content: bytes, x: torch.Tensor, tensors: list[int]) -> dict[int, np.ndarray]:
    """The values XNNPACK gives ``tensors`` on one image ``x`` (batch 1)."""
    it = _interpreter(expose(content, tensors), xnnpack=True)
    idx, a = _quantize_input(it, x)
    it.set_tensor(idx, a)
    it.invoke()
    by_tensor = {d["index"]: d for d in it.get_output_details()}
    return {t: np.array(it.get_tensor(by_tensor[t]["index"])) for t in tensors if t in by_tensor}


def run_file(content: bytes, images: torch.Tensor, xnnpack: bool = True) -> np.ndarray:
    """The file's float logits on ``images``, one at a time."""
    it = _interpreter(content, xnnpack=xnnpack)
    out = it.get_output_details()[0]
    s, z = out["quantization"]
    rows = []
    for x in images.split(1):
        idx, a = _quantize_input(it, x)
        it.set_tensor(idx, a)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        rows.append((y - z) * s if s else y)
    return np.concatenate(rows).reshape(len(images), -1)
