"""Tracing for structured pruning: the ops torch-pruning's graph cannot follow, frozen.

A reshape that splits or moves the channel dimension (channel shuffle, pixel shuffle), a
transpose or permute of the channel dimension, a split or slice along channels, and the
model's output are wrapped during tracing in an opaque op (:class:`_KeepChannels`), so the
channels flowing through them are kept rather than misrouted. Excluded blocks are opaque
the same way. Used by :mod:`edgeopt.prune.structured`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_RESHAPES = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "squeeze",
             "unsqueeze", "__getitem__", "narrow", "select", "index_select"}
_PERMUTES = {"transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t"}
_SPLITS = {"split", "chunk", "tensor_split", "unbind", "split_with_sizes", "unsafe_split",
           "unsafe_chunk", "hsplit", "vsplit", "dsplit"}
_MIXERS = {"pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle"}


class _KeepChannels(torch.autograd.Function):
    """An opaque op for the dependency graph: its output's autograd node links only to
    its inputs, so the ops in between are invisible and the channels around it are kept."""

    @staticmethod
    def forward(ctx, out, *inputs):  # the inputs only give the graph its edges
        ctx.n = len(inputs)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - tracing never runs backward
        return (None,) * (1 + ctx.n)


def _opaque(out: Any, inputs: list[torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        return _KeepChannels.apply(out.detach(), *inputs)
    if isinstance(out, (tuple, list)):
        return type(out)(_opaque(o, inputs) for o in out)
    return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _dims(args: tuple, kwargs: dict, names: tuple[str, ...]) -> list[int]:
    vals = list(args[1:]) + [kwargs[n] for n in names if n in kwargs]
    flat: list[int] = []
    for v in vals:
        flat.extend(v if isinstance(v, (tuple, list)) else [v])
    return [int(d) for d in flat if isinstance(d, int)]


def _graph_follows(name: str, args: tuple, kwargs: dict, src: torch.Tensor, out: Any) -> bool:
    """Whether torch-pruning maps channels through this layout op correctly (NC... layout)."""
    s = tuple(src.shape)
    if name in _MIXERS:
        return False
    if name in _SPLITS:
        return all(o.dim() >= 2 and o.shape[1] == s[1] for o in _tensors(out)) if len(s) >= 2 else True
    o = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if o is None or s == o:
        return True
    if name in _PERMUTES:
        dims = [d % len(s) for d in _dims(args, kwargs, ("dims", "dim0", "dim1", "source", "destination"))]
        if name == "permute":
            return dims[:2] == [0, 1]
        return len(s) > 2 and not {0, 1} & set(dims)
    if len(s) < 2 or len(o) < 2 or s[0] != o[0]:
        return False
    if s[1] == o[1]:  # channel dimension untouched: spatial reshape, size-1 dims, crops
        return True
    return len(s) == 4 and len(o) == 2 and o[1] == s[1] * s[2] * s[3]  # flatten before a Linear


class _Tracer(TorchFunctionMode):
    """Active while the dependency graph traces the model: names the module that owns each
    autograd node (for error messages) and wraps ops the graph cannot follow in an opaque op."""

    def __init__(self, model: nn.Module, opaque_modules: list[str], frozen_calls: set[int]):
        super().__init__()
        self.names = {}
        for n, m in model.named_modules():
            self.names.setdefault(m, n)
        self.stack: list[str] = []
        self.owner: dict[Any, tuple[int, str, str]] = {}  # grad_fn -> (call index, op, module)
        self.frozen: dict[str, set[str]] = {}  # owner module -> ops frozen automatically
        self.calls = 0
        self.frozen_calls = frozen_calls
        self.hooks = []
        for m in model.modules():
            self.hooks.append(m.register_forward_pre_hook(self._enter))
            self.hooks.append(m.register_forward_hook(self._leave))
        for n in opaque_modules:
            self.hooks.append(model.get_submodule(n).register_forward_hook(self._opaque_module, with_kwargs=True))
        self.hooks.append(model.register_forward_hook(self._keep_output))

    def _enter(self, module, args):
        self.stack.append(self.names.get(module, "?"))

    def _leave(self, module, args, out):
        if self.stack:
            self.stack.pop()

    @staticmethod
    def _keep_output(module, args, out):
        """The model's outputs (classes) never lose channels. Twice: torch-pruning makes the
        outermost node an output op; the inner one stays an opaque op that blocks pruning."""
        inner = _opaque(out, _tensors(out))
        return _opaque(inner, _tensors(inner))

    def _opaque_module(self, module, args, kwargs, out):
        return _opaque(out, [t for t in _tensors((args, kwargs)) if t.requires_grad])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        k, self.calls = self.calls, self.calls + 1
        name = getattr(func, "__name__", "")
        outs = _tensors(out)
        if not any(t.grad_fn is not None for t in outs):
            return out
        owner = self.stack[-1] if self.stack else ""
        for t in outs:
            self.owner.setdefault(t.grad_fn, (k, name, owner))
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        layout = name in _RESHAPES | _PERMUTES | _SPLITS | _MIXERS
        if k in self.frozen_calls or (layout and src is not None
                                       and not _graph_follows(name, args, kwargs, src, out)):
            self.frozen.setdefault(owner, set()).add(name)
            out = _opaque(out, [t for t in _tensors((args, kwargs)) if t.requires_grad])
        return out

    def close(self):
        for h in self.hooks:
            h.remove()
