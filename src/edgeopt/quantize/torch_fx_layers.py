"""What a converted torch.ao model holds: which layers are int8, and their int8 scales.

The int8 layers and the ones left float (with a warning for those the user did not ask
to keep float), the input scale and zero point of each int8 module, and the dequantized
int8 weights with their scales: what the sidecar records and the histograms draw.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_int8_module(mod: nn.Module) -> bool:
    """Whether ``mod`` is one of torch.ao's int8 modules (not a float or reference one).

    Example:
        >>> is_int8_module(torch.ao.nn.quantized.Linear(4, 2)), is_int8_module(nn.Linear(4, 2))
        (True, False)
    """
    path = type(mod).__module__
    return ".quantized" in path and ".reference" not in path


def layer_report(model: nn.Module, converted: nn.Module, keep_float: list[str], engine: str,
                 what: str) -> tuple[list[str], list[str], list[str]]:
    """(int8 layers, float layers, warnings) of a converted torch.ao model.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 2))
        >>> layer_report(m, m, [], "x86", "static")[1:]
        (['0'], ['layer 0 (Linear) has no static int8 kernel in torch.ao (engine x86) and stays float'])
    """
    from edgeopt.quantize.layers import float_only_layers, quantizable_layers

    mods = dict(converted.named_modules())
    orig = dict(model.named_modules())
    int8, floats, warns = [], [], []
    for name in quantizable_layers(model) + float_only_layers(model):
        mod = mods.get(name)
        if mod is not None and is_int8_module(mod):
            int8.append(name)
            continue
        floats.append(name)
        if name in keep_float:
            continue
        kind = type(orig[name]).__name__
        if kind.startswith("ConvTranspose") and engine in ("x86", "fbgemm") and what == "static":
            warns.append(f"layer {name} ({kind}) stays float: torch.ao's {engine} int8 ConvTranspose gives wrong "
                         f"results on this torch (engine qnnpack quantizes it correctly)")
        else:
            warns.append(f"layer {name} ({kind}) has no {what} int8 kernel in torch.ao (engine {engine}) and "
                         f"stays float")
    return int8, floats, warns


def fx_input_qparams(converted: Any) -> dict[str, dict[str, Any]]:
    """``{layer: {"scale", "zero_point", "dtype"}}``: the int8 input of each quantized module."""
    mods = dict(converted.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for node in converted.graph.nodes:
        if node.op != "call_module" or not is_int8_module(mods[node.target]) or not node.args:
            continue
        src = node.args[0]
        for _ in range(8):  # walk back through max-pool, flatten, ... to the producer of the qparams
            if not hasattr(src, "op"):
                break
            if src.op == "call_function" and src.target is torch.quantize_per_tensor:
                scale, zp = (getattr(converted, a.target) if hasattr(a, "target") else a for a in src.args[1:3])
                out[node.target] = {"scale": float(scale), "zero_point": int(zp), "dtype": "uint8"}
                break
            if src.op == "call_module" and hasattr(mods[src.target], "zero_point") and is_int8_module(mods[src.target]):
                m = mods[src.target]
                out[node.target] = {"scale": float(m.scale), "zero_point": int(m.zero_point), "dtype": "uint8"}
                break
            if not src.args:
                break
            src = src.args[0]
    return out


def int8_weight_qparams(mod: nn.Module) -> dict[str, Any] | None:
    """The int8 weight of a torch.ao quantized module, dequantized, with its scales.

    Example:
        >>> w = int8_weight_qparams(torch.ao.nn.quantized.dynamic.Linear(4, 2))
        >>> tuple(w["dequantized"].shape), w["dtype"], w["axis"]
        ((2, 4), 'int8', None)
    """
    w = getattr(mod, "weight", None)
    if not callable(w):
        return None
    q = w()
    if not isinstance(q, torch.Tensor) or not q.is_quantized:
        return None
    per_channel = q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    scale = q.q_per_channel_scales().float() if per_channel else torch.tensor([q.q_scale()])
    return {"dequantized": q.dequantize(), "scale": scale, "zero_point": 0, "dtype": "int8",
            "axis": int(q.q_per_channel_axis()) if per_channel else None}
