"""Which layers a quantizer touches, layer patterns, and batch-norm folding.

Layers are named by their qualified name (``features.3.conv.0.0``) or a pattern
(``features.0.*`` glob, ``re:.*classifier.*`` regex), never by module objects, so a recipe
and a CLI flag can say which layers stay float (DESIGN habit 3).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from edgeopt.layer_patterns import match_names

#: module types whose weights and inputs an int8 backend quantizes
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
#: module types that hold weights but no int8 kernel exists for in static quantization
#: here; they stay float with a warning (dynamic quantization handles LSTM/GRU).
FLOAT_ONLY = (nn.LSTM, nn.GRU, nn.RNN, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Conv3d,
              nn.MultiheadAttention, nn.Embedding)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the Conv/Linear layers a static int8 backend quantizes, in order.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        >>> quantizable_layers(m)
        ['0', '3']
    """
    return [name for name, mod in model.named_modules() if isinstance(mod, QUANTIZABLE) and name]


def float_only_layers(model: nn.Module) -> list[str]:
    """Qualified names of weight layers that static int8 leaves float (LSTM, ConvTranspose, ...)."""
    return [name for name, mod in model.named_modules() if isinstance(mod, FLOAT_ONLY) and name]


def match_layers(names: Sequence[str], patterns: Iterable[str], what: str = "keep_float") -> list[str]:
    """The ``names`` matched by any of ``patterns`` (:mod:`edgeopt.layer_patterns`); a pattern
    that matches nothing is a one-line ConfigError listing the nearest layer names.

    Example:
        >>> match_layers(["features.0.0", "features.1.conv.0", "classifier.1"], ["features.1", "re:class.*"])
        ['features.1.conv.0', 'classifier.1']
    """
    return match_names(names, patterns, what, kind="quantizable layer")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv->BatchNorm pair folded into the conv.

    What every int8 backend deploys: the BN scale and shift become the conv's weight and
    bias, so one int8 conv replaces two ops. Uses ``torch.fx`` (the copy is a GraphModule
    whose conv layers keep their qualified names); a model fx cannot trace is returned as
    an unfolded eval copy with a warning (backends fold it themselves later).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> f = fold_batchnorm(m)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> bool(torch.allclose(f(x), m(x), atol=1e-5)), any(isinstance(x, nn.BatchNorm2d) for x in f.modules())
        (True, False)
    """
    from torch.fx.experimental.optimization import fuse

    src = _split_norm_act(copy.deepcopy(model).eval())
    try:
        folded = fuse(_trace_keeping_layers(src), inplace=True, no_trace=True)
    except Exception as exc:  # noqa: BLE001 - untraceable control flow: keep the model, say so
        warnings.warn(f"batch-norm folding skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                      stacklevel=2)
        return src
    for attr in ("edgeopt_spec", "edgeopt_arch", "edgeopt_lineage"):
        if hasattr(model, attr):
            setattr(folded, attr, getattr(model, attr))
    return folded.eval()


def _trace_keeping_layers(model: nn.Module) -> nn.Module:
    """``torch.fx`` GraphModule of ``model`` in which every Conv/Linear stays one module.

    fx keeps only ``torch.nn``'s own classes as leaves; a subclass from another library
    (timm's ``Linear``) was traced into, leaving a bare Module under the layer's name that
    no backend recognises as a layer ("'classifier' is not a Conv/Linear layer").
    """
    from torch.fx import GraphModule, Tracer

    class _KeepLayers(Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, QUANTIZABLE) or super().is_leaf_module(m, qualname)

    return GraphModule(model, _KeepLayers().trace(model), model.__class__.__name__)


def _split_norm_act(model: nn.Module) -> nn.Module:
    """Replace fused norm+activation modules (timm's ``BatchNormAct2d``: a BatchNorm2d subclass
    that also applies ``drop`` and ``act``) by ``Sequential(BatchNorm2d, drop, act)``, in place.

    torch.fx's fuse folds only a plain BatchNorm after a conv; timm builds EfficientNet-Lite,
    MobileNetV3 and others from BatchNormAct2d, whose convs were otherwise left unfolded (and
    their int8 ranges unchecked). Same numbers: its forward is batch_norm, then drop, then act.
    """
    for name, mod in list(model.named_modules()):
        if (type(mod) is not nn.BatchNorm2d and isinstance(mod, nn.BatchNorm2d)
                and isinstance(getattr(mod, "act", None), nn.Module)
                and isinstance(getattr(mod, "drop", None), nn.Module)):
            bn = nn.BatchNorm2d(mod.num_features, eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                                track_running_stats=mod.track_running_stats)
            bn.load_state_dict(nn.BatchNorm2d.state_dict(mod), strict=False)
            bn.eval()
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, nn.Sequential(bn, mod.drop, mod.act))
    return model


def check_finite(model: nn.Module, x: torch.Tensor, what: str = "calibration images") -> None:
    """Raise a one-line DataError when ``x`` or the model's outputs on it hold NaN or inf."""
    from edgeopt.errors import DataError

    if not torch.isfinite(x).all():
        raise DataError(f"the {what} contain NaN or inf values; check the dataset and its normalisation")
    with torch.no_grad():
        out = model.eval()(x[:32])
    if not torch.isfinite(out).all():
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        where = f" (non-finite weights in {', '.join(bad[:3])})" if bad else ""
        raise DataError(f"the model outputs NaN or inf on the {what}{where}; quantization needs a finite float model")
