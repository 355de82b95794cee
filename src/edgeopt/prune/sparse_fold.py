"""Batch norm folded into the convolution before the sparse int8 checkpoint is written.

Why: a batch norm keeps four fp32 vectors per channel (weight, bias, running mean and
variance). In MobileNetV2 they are 3 % of the dense checkpoint, which alone would hold a
70 %-sparse int8 file above 0.14x of the dense one. Every int8 runtime folds batch norm
into the preceding convolution; the sparse int8 file does the same, and stays a checkpoint
of the same architecture: the folded per-channel shift goes into the batch norm's ``bias``
(stored as fp16, like the other small vectors of the int8 file), and its weight, mean and
variance become constants (1, 0, 1 - eps) that take no bytes, so
``BN(x) = (x - 0) / sqrt(1 - eps + eps) * 1 + shift = x + shift``. Zeros of the conv
weight stay zeros (each output channel is scaled by one number), so the sparsity is kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``[(conv, bn)]``: each Conv2d whose only consumer is a BatchNorm2d of its channels.

    Found on the traced graph (so the pairing is what the forward pass computes, not a guess
    from module order); a model that does not trace gives ``[]`` (nothing is folded).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> conv_bn_pairs(m)
        [('0', '1')]
    """
    from edgeopt.quantize.layers import _trace_keeping_layers

    try:
        gm = _trace_keeping_layers(model)
    except Exception:  # noqa: BLE001 - a model fx cannot trace is stored unfolded, still exact enough
        return []
    mods = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        bn = mods.get(node.target) if node.op == "call_module" else None
        if type(bn) is not nn.BatchNorm2d or not (bn.affine and bn.track_running_stats):
            continue
        src = node.args[0] if node.args else None
        conv = mods.get(src.target) if getattr(src, "op", None) == "call_module" else None
        if isinstance(conv, nn.Conv2d) and len(src.users) == 1 and conv.out_channels == bn.num_features:
            pairs.append((str(src.target), str(node.target)))
    return pairs


@torch.no_grad()
def fold_state(model: nn.Module, sd: dict[str, torch.Tensor],
               pairs: list[tuple[str, str]]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Fold each pair's batch norm into ``sd`` (a copy); return it and the constant tensors.

    Returns:
        ``(state_dict, {tensor name: constant value})``: the folded conv weights and shifts,
        and the batch-norm tensors that became constants (stored as no bytes).
    """
    out = dict(sd)
    consts: dict[str, float] = {}
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        p = f"{bn_name}." if bn_name else ""
        c = f"{conv_name}." if conv_name else ""
        var, mean = out[p + "running_var"].double(), out[p + "running_mean"].double()
        gamma, beta = out[p + "weight"].double(), out[p + "bias"].double()
        s = gamma / torch.sqrt(var + bn.eps)  # per output channel
        w = out[c + "weight"]
        out[c + "weight"] = (w.double() * s.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        shift = beta - mean * s
        if conv.bias is not None:
            shift = shift + out[c + "bias"].double() * s
            consts[c + "bias"] = 0.0
        out[p + "bias"] = shift.to(out[p + "bias"].dtype)
        consts[p + "weight"] = 1.0
        consts[p + "running_mean"] = 0.0
        consts[p + "running_var"] = 1.0 - bn.eps
    return out, consts


def folded_names(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The header's record of what was folded."""
    return [{"conv": c, "bn": b} for c, b in pairs]
