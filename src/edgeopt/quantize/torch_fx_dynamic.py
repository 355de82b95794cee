"""torch.ao dynamic quantization (``quantize_dynamic``): int8 Linear/LSTM/GRU weights,
activations quantized per batch at run time.

x86/fbgemm kernels quantize each batch to 7 bits (``reduce_range``), qnnpack to 8; the
reference (:class:`~edgeopt.quantize.simulate.QuantSim`) does the same for the Linear
layers it simulates.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgeopt.errors import UnsupportedModelError
from edgeopt.quantize.config import QuantConfig
from edgeopt.quantize.torch_fx_layers import int8_weight_qparams, is_int8_module

#: module types dynamic quantization converts
DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)


def fx_dynamic(model: nn.Module, cfg: QuantConfig, keep_float: list[str]
               ) -> tuple[nn.Module, nn.Module, list[str], list[str], list[str], dict[str, Any]]:
    """(int8 model, reference, int8 layers, float layers, warnings, extra meta) of dynamic
    quantization.

    Raises:
        UnsupportedModelError: no Linear/LSTM/GRU layer is left to quantize.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    from edgeopt.quantize.layers import quantizable_layers
    from edgeopt.quantize.simulate import QuantSim

    targets = [n for n, m in model.named_modules() if n and isinstance(m, DYNAMIC_TYPES)]
    chosen = [n for n in targets if n not in keep_float]
    if not chosen:
        convs = len([n for n in quantizable_layers(model) if n not in targets])
        have = f"it has {convs} Conv layer(s) and no other" if not targets else "every one is in keep_float"
        raise UnsupportedModelError(
            f"dynamic quantization only covers Linear/LSTM/GRU layers and {have}; use method='static'"
        )
    spec = {n: per_channel_dynamic_qconfig if cfg.per_channel and isinstance(dict(model.named_modules())[n], nn.Linear)
            else default_dynamic_qconfig for n in chosen}
    int8_model = quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)
    mods = dict(int8_model.named_modules())
    int8 = [n for n in chosen if is_int8_module(mods[n])]
    floats = [n for n in targets if n not in int8]
    warns = [f"layer {n} ({type(mods[n]).__name__}) was not converted by quantize_dynamic and stays float"
             for n in floats if n not in keep_float]
    others = [n for n in quantizable_layers(model) if n not in targets]
    if others:
        warns.append(f"dynamic quantization leaves the {len(others)} Conv layer(s) float; method='static' "
                     f"quantizes them too")
    # x86/fbgemm dynamic kernels quantize each batch to [0, 127] (reduce_range); qnnpack to [0, 255]
    dyn_input = {"dynamic": True, "dtype": "uint8", "reduce_range": cfg.engine != "qnnpack"}
    qparams: dict[str, Any] = {}
    for n in int8:
        w = int8_weight_qparams(mods[n])
        if w is not None and isinstance(dict(model.named_modules())[n], nn.Linear):
            qparams[n] = {"weight": w, "input": dict(dyn_input)}
    unsimulated = [n for n in int8 if n not in qparams]
    if unsimulated:
        warns.append(f"the reference simulates Linear layers only; {', '.join(unsimulated)} run float there")
    reference = QuantSim(model, qparams)
    return int8_model, reference, int8, floats, warns, {"qparams": qparams,
                                                       "exporter": "torch.ao.quantization.quantize_dynamic"}
