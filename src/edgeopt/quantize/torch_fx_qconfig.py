"""torch.ao FX graph mode: which engines, and the QConfigMapping a :class:`QuantConfig` asks for.

Activations are uint8 ``[0, qmax]`` (:func:`~edgeopt.quantize._torch_common.activation_qmax`)
with the calibration method's observer; weights int8, min/max, per channel or per tensor.
The engine's own defaults are kept where they differ on purpose (fixed-qparams sigmoid and
tanh, reshape ops) or need another weight scheme (ConvTranspose: per tensor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeopt.errors import MissingDependencyError
from edgeopt.quantize._torch_common import activation_observer, activation_qmax
from edgeopt.quantize.config import QuantConfig

#: the torch.ao FX engines (pt2e-x86 is torchao's, see :mod:`edgeopt.quantize._torch_pt2e`)
FX_ENGINES = ("x86", "fbgemm", "qnnpack")


def require_fx(engine: str) -> None:
    """Raise :class:`MissingDependencyError` when this torch has no FX graph mode or no ``engine``.

    Example:
        >>> require_fx("x86")  # torch 2.x on x86-64
    """
    import importlib

    try:  # torch.ao is deprecated upstream; a torch without it is a clear error, not a crash
        importlib.import_module("torch.ao.quantization.quantize_fx")
    except ImportError:
        raise MissingDependencyError(
            f"torch {torch.__version__} no longer ships torch.ao.quantization FX graph mode (engine '{engine}'); "
            f"use engine='pt2e-x86' (torchao) or backend='onnxruntime'"
        ) from None
    engines = torch.backends.quantized.supported_engines
    if engine not in engines:
        raise MissingDependencyError(
            f"this torch build has no '{engine}' quantized engine (it has {', '.join(e for e in engines if e != 'none')}); "
            f"choose one of those"
        )


def _ctor_class(ctor: Any) -> type:
    """The observer class behind a ``with_args`` constructor (or the class itself)."""
    p = getattr(ctor, "p", None)
    cls = getattr(p, "func", ctor)
    return cls if isinstance(cls, type) else type(cls)


def fx_qconfig_mapping(cfg: QuantConfig, keep_float: list[str], qat: bool) -> Any:
    """The torch.ao ``QConfigMapping`` for ``cfg``; ``keep_float`` layers get none (stay float).

    Example:
        >>> m = fx_qconfig_mapping(QuantConfig(backend="torch", engine="x86"), ["fc"], qat=False)
        >>> m.global_qconfig.activation().quant_max, m.module_name_qconfigs["fc"]
        (127, None)
    """
    from torch.ao.quantization import (
        QConfig,
        get_default_qat_qconfig_mapping,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization import fake_quantize as fq
    from torch.ao.quantization import observer as ob

    engine = cfg.engine
    qmax = activation_qmax(cfg)
    if qat:
        mapping = get_default_qat_qconfig_mapping(engine)
        qscheme = torch.per_tensor_symmetric if cfg.symmetric_activations else torch.per_tensor_affine
        act = fq.FusedMovingAvgObsFakeQuantize.with_args(
            observer=ob.MovingAverageMinMaxObserver, quant_min=0, quant_max=qmax, dtype=torch.quint8,
            qscheme=qscheme)
        weight = fq.default_fused_per_channel_wt_fake_quant if cfg.per_channel else fq.default_fused_wt_fake_quant
        tensor_weight = fq.default_fused_wt_fake_quant
    else:
        mapping = get_default_qconfig_mapping(engine)
        act = activation_observer(cfg, ob.MinMaxObserver, qmax)
        tensor_weight = ob.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        weight = (ob.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
                  if cfg.per_channel else tensor_weight)
    qconfig = QConfig(activation=act, weight=weight)
    old_global = mapping.global_qconfig
    mapping.set_global(qconfig)
    # The engine's defaults per op type: ConvTranspose gets per-tensor weights (torch.ao has
    # no per-channel int8 ConvTranspose); LayerNorm/PReLU keep their weight handling but take
    # our activation observer; fixed-qparams ops (sigmoid, tanh, ...) and reshape keep theirs.
    calibrating = (ob.HistogramObserver, ob.MinMaxObserver, fq.FusedMovingAvgObsFakeQuantize)
    for pattern, old in list(mapping.object_type_qconfigs.items()):
        if old is None:
            continue
        if pattern in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) or "transpose" in str(pattern):
            # x86/fbgemm int8 ConvTranspose computes garbage on torch 2.14.1 (SQNR -4 dB against
            # float with PyTorch's own default qconfig; qnnpack: 48 dB): those stay float there
            broken = engine in ("x86", "fbgemm")
            mapping.set_object_type(pattern, None if broken else QConfig(activation=act, weight=tensor_weight))
        elif issubclass(_ctor_class(old.activation), calibrating):
            w = weight if old.weight is old_global.weight else old.weight
            mapping.set_object_type(pattern, QConfig(activation=act, weight=w))
    for name in keep_float:
        mapping.set_module_name(name, None)
    return mapping
