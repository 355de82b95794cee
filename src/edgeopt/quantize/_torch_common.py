"""Helpers shared by the torch backend's engines: torch.ao FX and torchao PT2E.

The quantized-engine switch, warning filters, the one-line error for an untraceable model,
the histogram-range observer behind ``calibration="percentile"/"entropy"``, calibration
and QAT fine-tuning.
"""

from __future__ import annotations

import contextlib
import linecache
import sysconfig
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import UnsupportedModelError
from edgeopt.quantize.config import QuantConfig

CALIB_BATCH = 64
#: warnings torch.ao emits on every call (deprecation notices, reduce_range advice)
_NOISE = (".*torch.ao.quantization is deprecated.*", ".*reduce_range will be deprecated.*",
          ".*quantized tensor creation functions.*", ".*is deprecated.*", ".*TracerWarning.*")



@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block, restore it after.

    Example:
        >>> before = torch.backends.quantized.engine
        >>> with quantized_engine("qnnpack"):
        ...     torch.backends.quantized.engine
        'qnnpack'
        >>> torch.backends.quantized.engine == before
        True
    """
    before = torch.backends.quantized.engine
    if before != engine:
        torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        if torch.backends.quantized.engine != before:
            torch.backends.quantized.engine = before


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _library_dirs() -> tuple[str, ...]:
    import os

    dirs = [os.path.dirname(torch.__file__), sysconfig.get_paths()["stdlib"], os.path.dirname(__file__)]
    try:
        import torchao

        dirs.append(os.path.dirname(torchao.__file__))
    except ImportError:
        pass
    return tuple(d + os.sep for d in dirs)


def untraceable(exc: BaseException, model: nn.Module, tool: str, hint: str) -> UnsupportedModelError:
    """One-line UnsupportedModelError naming the module and source line a tracer failed on.

    The innermost frame of the exception whose ``self`` is a module of ``model`` names the
    layer; the innermost frame outside torch, torchao and the standard library names the
    line (the model's own code).

    Example:
        >>> class B(nn.Module):
        ...     def forward(self, x):
        ...         return x if x.sum() > 0 else -x
        >>> m = B()
        >>> try:
        ...     torch.fx.symbolic_trace(m)
        ... except Exception as exc:
        ...     err = untraceable(exc, m, "torch.fx", "make the branch tensor-free")
        >>> str(err).split(" (")[0]
        'torch.fx cannot trace the forward() of B'
    """
    names = {id(m): n for n, m in model.named_modules()}
    layer, line = None, None
    libs = _library_dirs()
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            layer = names[id(owner)]
        fname = frame.f_code.co_filename
        if not fname.startswith(libs) and not fname.startswith("<"):
            code = linecache.getline(fname, lineno).strip()
            line = f"{Path(fname).name}:{lineno} `{code}`"
    if layer is None:
        where = "the model"
    elif layer == "":
        where = f"the forward() of {type(model).__name__}"
    else:
        where = f"layer '{layer}' ({type(dict(model.named_modules())[layer]).__name__})"
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)[:160]
    at = f" at {line}" if line else ""
    return UnsupportedModelError(f"{tool} cannot trace {where}{at} ({type(exc).__name__}: {first}); {hint}")


def range_observer(base: type) -> type:
    """A ``base`` (a MinMaxObserver class) subclass whose range comes from a histogram.

    ``method="percentile"`` clips at :func:`~edgeopt.quantize.math.percentile_range`,
    ``"entropy"`` at :func:`~edgeopt.quantize.math.entropy_range`; the result never
    widens the observed min/max. Used for torch.ao (FX) and torchao (PT2E) alike.

    Example:
        >>> from torch.ao.quantization.observer import MinMaxObserver
        >>> obs = range_observer(MinMaxObserver)(method="percentile", percentile=99.0, dtype=torch.quint8)
        >>> _ = obs(torch.cat([torch.linspace(0, 1, 10_000), torch.tensor([100.0])]))  # one outlier
        >>> scale, zero_point = obs.calculate_qparams()
        >>> round(float(scale) * 255, 1), int(zero_point)  # the range ends near 1, not at the 100
        (1.0, 0)
    """

    class RangeObserver(base):  # type: ignore[misc,valid-type]
        def __init__(self, method: str = "percentile", percentile: float = 99.999, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.method = method
            self.percentile = percentile
            self.hist: Any = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from edgeopt.quantize.math import Histogram

            if x.numel() == 0:
                return x
            super().forward(x)
            if self.hist is None:
                self.hist = Histogram()
            self.hist.update(x.detach())
            return x

        def calculate_qparams(self):
            from edgeopt.quantize import math as qm

            if self.hist is None or self.hist.total == 0:
                return super().calculate_qparams()
            symmetric = self.qscheme == torch.per_tensor_symmetric
            if self.method == "percentile":
                lo, hi = qm.percentile_range(self.hist, self.percentile, symmetric=symmetric)
            else:
                lo, hi = qm.entropy_range(self.hist)
            lo = torch.maximum(torch.as_tensor(float(lo)), self.min_val.detach().cpu()).reshape(self.min_val.shape)
            hi = torch.minimum(torch.as_tensor(float(hi)), self.max_val.detach().cpu()).reshape(self.max_val.shape)
            return self._calculate_qparams(lo.to(self.min_val.device), hi.to(self.max_val.device))

    RangeObserver.__name__ = RangeObserver.__qualname__ = f"Edgeopt{base.__name__}Range"
    return RangeObserver


def activation_qmax(cfg: QuantConfig) -> int:
    """127 (7-bit activations, ``reduce_range``) or 255: ``cfg.reduce_range``, and when that
    is None the engine's default (torch.ao: 7 bits on x86/fbgemm; qnnpack and PT2E X86: 8).

    Example:
        >>> activation_qmax(QuantConfig(backend="torch")), activation_qmax(QuantConfig(engine="qnnpack"))
        (127, 255)
    """
    rr = getattr(cfg, "reduce_range", None)
    if rr is None:
        rr = cfg.engine in ("x86", "fbgemm")
    return 127 if rr else 255


def activation_observer(cfg: QuantConfig, minmax: type, qmax: int) -> Any:
    """The activation observer constructor for ``cfg`` (uint8, range ``[0, qmax]``)."""
    qscheme = torch.per_tensor_symmetric if cfg.symmetric_activations else torch.per_tensor_affine
    kw = {"dtype": torch.quint8, "qscheme": qscheme, "quant_min": 0, "quant_max": qmax}
    if cfg.calibration == "minmax":
        return minmax.with_args(**kw)
    return range_observer(minmax).with_args(method=cfg.calibration, percentile=cfg.percentile, **kw)


def keepdim_means(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite ``x.mean(dims)`` as ``x.mean(dims, keepdim=True).squeeze(dims)``, in place.

    torch's quantized ``mean`` without ``keepdim`` fails with "required rank 4 tensor to use
    channels_last format" when its input is ``[N, C, 1, 1]`` in channels_last (the int8
    conv's output layout): ShuffleNetV2's ``x.mean([2, 3])`` global pool at 32x32 input.
    With ``keepdim=True`` the result stays 4-D, then the reduced dims are squeezed: the same
    values (checked for float) and shape.

    Example:
        >>> class Pool(nn.Module):
        ...     def forward(self, x):
        ...         return x.mean([2, 3])
        >>> gm = keepdim_means(torch.fx.symbolic_trace(Pool()))
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.equal(gm(x), x.mean([2, 3]))
        True
    """
    changed = False
    for node in list(gm.graph.nodes):
        if not ((node.op == "call_method" and node.target == "mean")
                or (node.op == "call_function" and node.target is torch.mean)):
            continue
        args, kwargs = list(node.args), dict(node.kwargs)
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if keep is not False or isinstance(dims, bool):
            continue
        if isinstance(dims, int):
            dims = (dims,)
        if not (isinstance(dims, (list, tuple)) and dims and all(isinstance(d, int) for d in dims)):
            continue  # a mean over everything, or dims computed at run time: left alone
        if len(args) > 2:
            args[2] = True
        else:
            kwargs["keepdim"] = True
        node.args, node.kwargs = tuple(args), kwargs
        with gm.graph.inserting_after(node):
            squeezed = gm.graph.call_method("squeeze", (node, tuple(dims)))
        node.replace_all_uses_with(squeezed, delete_user_cb=lambda user, new=squeezed: user is not new)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def calibrate(prepared: nn.Module, calibration: torch.Tensor) -> None:
    with torch.no_grad():
        for i in range(0, len(calibration), CALIB_BATCH):
            prepared(calibration[i:i + CALIB_BATCH])


def qat_finetune(prepared: nn.Module, model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor,
                 data: Any, out: Path, exported: bool) -> dict[str, Any]:
    """Initial ranges from the calibration images, then ``edgeopt.quantize.qat.finetune``
    (the project Trainer; BN statistics and observers frozen at ``cfg.qat_freeze_epoch``).
    ``prepared`` ends in eval mode; returns the fine-tuning record for the sidecar."""
    from edgeopt.quantize.qat import finetune

    for attr in ("edgeopt_spec", "edgeopt_arch", "edgeopt_lineage"):
        if hasattr(model, attr):
            setattr(prepared, attr, getattr(model, attr))
    calibrate(prepared, calibration)
    torch.manual_seed(cfg.seed)
    info = finetune(prepared, cfg, data, out, exported=exported)
    return {"epochs": info.get("epochs"), "frozen_at_step": info.get("frozen_at_step"),
            "history": [dict(h) for h in info.get("history") or []], "val_acc": info.get("val_acc")}
