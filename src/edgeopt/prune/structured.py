"""Structured pruning: remove whole channels/filters, so the deployed model is smaller.

torch-pruning's DependencyGraph finds which layers must lose the same channels (a conv and
its batch norm, the next layer's inputs, both sides of a residual add, the parts of a
concatenation, depthwise convs and their neighbours) and its ``BasePruner`` ranks the
channels by an importance score (:mod:`edgeopt.prune.importance`) and removes them.

What edgeopt adds around it:

* **Layers by name.** Prunable layers that are not chosen (protected, excluded) are the
  pruner's ``ignored_layers``; an excluded *block* (a module holding layers, e.g.
  ``--exclude features.3``) is left whole: the graph sees it as one opaque op whose input
  and output channels stay as they are.
* **Ops the graph cannot follow are frozen, not guessed.** A reshape that splits or moves
  the channel dimension (channel shuffle in ShuffleNet, pixel shuffle), a transpose or
  permute of the channel dimension, a split or slice along channels, and the model's output
  are wrapped during tracing in an opaque op, so the channels flowing through them are kept
  (a warning names the blocks). Everything else the graph follows.
* **Counts that deploy well.** Kept channel counts are multiples of ``round_to`` (also
  for grouped convolutions, e.g. RegNet, where torch-pruning 1.6 mixes per-group and total
  counts), and no layer loses more than ``max_layer_ratio`` of its channels, in local and
  in global scope.
* **MAC and parameter targets.** ``target="macs"|"params"`` bisects the channel ratio on
  copies until the model lost ``ratio`` of its MACs/parameters (within half a point when the
  channel granularity allows, else the nearest reachable).
* **A clear error** when the graph fails (an exception of torch-pruning, or a pruned model
  whose forward pass breaks): ``UnsupportedModelError`` naming the layer and the
  ``--exclude PATTERN`` that skips it.
"""

from __future__ import annotations

import copy
import math
import shlex
from typing import Any

import torch
from torch import nn

from edgeopt.errors import UnsupportedModelError, brief
from edgeopt.prune._base import Pruned
from edgeopt.prune.importance import build_importance, copy_with_grads
from edgeopt.prune.layers import PRUNABLE_TYPES, prunable_layers, resolve_layer_ratios
from edgeopt.prune._graph import _Tracer, _tensors
from edgeopt.prune.record import make_record

#: bisection steps of the MAC/parameter target search
_SEARCH_STEPS = 14

#: retries of the graph build after freezing an op downstream of an excluded layer
_MAX_RETRIES = 32

def _pruner_class():
    import torch_pruning as tp

    class _Pruner(tp.pruner.BasePruner):
        """BasePruner whose rounding counts channels per group of a grouped conv and keeps
        at least ``(1 - max_pruning_ratio)`` of each layer (also in global scope)."""

        def _track(self):
            self._last = None
            self._cg: dict[Any, int] = {}
            out_fn = self.DG.get_out_channels

            def get_out_channels(m):
                self._last = m  # _prune asks for the root's channels right before _round_to
                return out_fn(m)

            self.DG.get_out_channels = get_out_channels

        def _groups_of(self, m) -> int:
            if m is None or not (self.in_channel_groups or self.out_channel_groups):
                return 1
            if m not in self._cg:
                fn = self.DG.get_pruner_of_module(m).prune_out_channels
                group = self.DG.get_pruning_group(m, fn, list(range(self.DG.get_out_channels(m))))
                self._cg[m] = self._get_channel_groups(group)
            return self._cg[m]

        def _round_to(self, n_pruned, current_channels, round_to):
            cg = self._groups_of(self._last)
            per = current_channels // cg  # n_pruned counts channels of one group
            min_keep = max(1, math.ceil(per * (1.0 - self.max_pruning_ratio) - 1e-9))
            keep = max(per - int(n_pruned), min_keep)
            step = max(1, int(round_to) // math.gcd(int(round_to), cg))
            k = keep - keep % step
            if k < min_keep:
                k = -(-min_keep // step) * step
            return max(per - min(k, per), 0)

    return _Pruner


def _failing_node(exc: BaseException):
    """The innermost torch-pruning graph node a traceback frame was working on."""
    from torch_pruning.dependency import Node

    node, tb = None, exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        for a in code.co_varnames[:code.co_argcount]:
            v = tb.tb_frame.f_locals.get(a)
            if isinstance(v, Node):
                node = v
        tb = tb.tb_next
    return node


def _upstream_layer(node, names: dict) -> str | None:
    """The nearest Conv/Linear upstream of a graph node (breadth first)."""
    seen, todo = set(), list(node.inputs)
    while todo:
        n = todo.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.module, PRUNABLE_TYPES) and n.module in names:
            return names[n.module]
        todo.extend(n.inputs)
    return None


def _unsupported(layer: str, what: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"structured pruning cannot handle layer '{layer}' ({what}: {why}); skip it with "
        f"--exclude {shlex.quote(layer)} (PruneConfig.exclude)")


def _build(model, config, layers, ratios, default, importance, example, opaque_modules):
    """The pruner for ``model`` (graph traced), retrying with ops after excluded layers frozen."""
    mods = dict(model.named_modules())
    chosen = set(layers)
    left_alone = set(prunable_layers(model)) - chosen
    ignored = [mods[n] for n in left_alone]
    table = resolve_layer_ratios(layers, config.layer_ratios, -1.0, all_names=prunable_layers(model))
    ratio_dict = {mods[n]: ratios[n] for n in layers if table[n] >= 0} if config.layer_ratios else None
    frozen_calls: set[int] = set()
    for _ in range(_MAX_RETRIES):
        tracer = _Tracer(model, opaque_modules, frozen_calls)
        try:
            with tracer, torch.enable_grad():
                pruner = _pruner_class()(
                    model, example, importance, global_pruning=config.scope == "global",
                    pruning_ratio=min(default, config.max_layer_ratio),
                    pruning_ratio_dict=ratio_dict, max_pruning_ratio=config.max_layer_ratio,
                    ignored_layers=ignored, round_to=config.round_to or 1)
        except Exception as exc:  # noqa: BLE001 - torch-pruning fails on a graph it cannot map
            node = _failing_node(exc)
            if node is None:
                raise UnsupportedModelError(
                    f"structured pruning cannot trace this model ({brief(exc, 200)}); exclude "
                    f"the block that holds the failing op with --exclude PATTERN") from None
            k, op, owner = tracer.owner.get(node.grad_fn, (None, str(node.module), ""))
            if node.module in tracer.names:  # a layer of the model, not an op of the graph
                owner = tracer.names[node.module]
            layer = owner or _upstream_layer(node, tracer.names) or "?"
            if layer in left_alone and k is not None and k not in frozen_calls:
                frozen_calls.add(k)  # downstream of a layer left alone: freeze the op, retry
                continue
            raise _unsupported(layer, op, brief(exc, 160)) from None
        finally:
            tracer.close()
        break
    else:
        raise UnsupportedModelError("structured pruning: the dependency graph kept failing")
    for node in pruner.DG.module2node.values():
        if type(node.grad_fn).__name__ == "_KeepChannelsBackward":
            pruner.ignored_layers.append(node.module)  # blocks every group touching it
    pruner._track()
    return pruner, tracer.frozen


def _check(model: nn.Module, example: torch.Tensor, want: list[torch.Size]) -> None:
    """Run the pruned model; a failure names the block it happened in."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []
    ran: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: stack.append(names[m])) for m in names]

    def leave(m, a, o):
        stack.pop()
        ran.append(names[m])

    hooks += [m.register_forward_hook(leave) for m in names]
    try:
        with torch.no_grad():
            got = [t.shape for t in _tensors(model(example))]
        if got != want:
            raise RuntimeError(f"the output shapes changed from {want} to {got}")
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the message names where
        where = [n for n in stack if n]
        layer = where[-1] if where else None
        if layer is not None and isinstance(model.get_submodule(layer), PRUNABLE_TYPES) and len(where) > 1:
            layer = where[-2]  # a layer fed the wrong channels: its block is the unit to skip
        if layer is None:
            layer = next((n for n in reversed(ran) if isinstance(model.get_submodule(n), PRUNABLE_TYPES)), "?")
        raise _unsupported(layer, "the pruned model fails", brief(exc, 160)) from None
    finally:
        for h in hooks:
            h.remove()


def _opaque_blocks(model: nn.Module, exclude) -> list[str]:
    """Excluded modules that hold layers (blocks), outermost only; they stay whole."""
    from edgeopt.layer_patterns import matches as _matches

    hits = [n for n, m in model.named_modules()
            if n and not isinstance(m, PRUNABLE_TYPES) and any(_matches(n, p) for p in exclude)
            and any(isinstance(c, PRUNABLE_TYPES) for c in m.modules())]
    return [n for n in hits if not any(n.startswith(h + ".") for h in hits)]


def _prune_at(model, config, layers, ratios, default, importance, example, blocks):
    pruner, frozen = _build(model, config, layers, ratios, default, importance, example, blocks)
    pruner.step()
    kept: dict[str, list[int]] = {}
    for name, is_out, idxs in pruner.pruning_history():
        if is_out and name in set(layers):
            n = int(model.get_submodule(name).weight.shape[0]) + len(idxs)
            kept[name] = sorted(set(range(n)) - {int(i) for i in idxs})
    return frozen, kept


def _size(model: nn.Module, target: str) -> int:
    if target == "params":
        return sum(p.numel() for p in model.parameters())
    from edgeopt.evaluate.macs import count_macs

    return count_macs(model).total_macs


def _scaled(ratios: dict[str, float], config, c: float) -> tuple[dict[str, float], float]:
    """Layer ratios at channel ratio ``c``: a sparsity table's ratios keep their proportions."""
    base = config.ratio or 1.0
    return {n: min(config.max_layer_ratio, r / base * c) for n, r in ratios.items()}, min(
        config.max_layer_ratio, c)


def _search(model, config, layers, ratios, importance, example, want, blocks, warnings):
    """The channel ratio at which the model loses ``config.ratio`` of its MACs/params."""
    total = _size(model, config.target)
    goal = config.ratio
    lo, hi = 0.0, config.max_layer_ratio * (config.ratio or 1.0) / min(r for r in ratios.values() if r > 0)
    best = (float("inf"), 0.0, 0.0)

    def removed(c):
        twin = copy_with_grads(model)
        _prune_at(twin, config, layers, *_scaled(ratios, config, c), importance, example, blocks)
        _check(twin.eval(), example, want)
        return 1.0 - _size(twin, config.target) / total

    for _ in range(_SEARCH_STEPS):
        mid = (lo + hi) / 2
        got = removed(mid)
        best = min(best, (abs(got - goal), mid, got))
        if abs(got - goal) <= 0.005:
            break
        lo, hi = (mid, hi) if got < goal else (lo, mid)
    if best[0] > 0.01:
        warnings.append(f"target {config.target}: reached {best[2]:.1%} removed of {goal:.1%} wanted "
                        f"(channel steps of round_to={config.round_to} and max_layer_ratio="
                        f"{config.max_layer_ratio} allow no closer)")
    return best[1], best[2]


def METHOD(model: nn.Module, config: Any, layers: list[str], ratios: dict[str, float],
           data: Any = None, progress: bool = False) -> Pruned:
    """Remove channels of ``model`` in place (the registry's ``structured`` method).

    Args:
        model: the copy :func:`edgeopt.prune.prune` made; it carries its ModelSpec.
        config: the PruneConfig (``importance``, ``scope``, ``target``, ``round_to``,
            ``max_layer_ratio``, ``layer_ratios``, ``exclude``, ``calibration_samples``).
        layers: the chosen layers (their output channels may be removed).
        ratios: ``{layer: fraction of channels removed}`` for ``layers``.
        data: a DataModule (``taylor``/``obd`` importance), else None.
        progress: unused (one pass; the target search runs at most 14 trial prunings).

    Returns:
        ``Pruned`` with the structure record (:func:`edgeopt.prune.record.make_record`) and
        ``info``: ``importance``, ``channels`` ``{layer: [before, after]}``, ``frozen``
        (blocks whose channels were kept), ``channel_ratio`` and ``target_removed``.

    Raises:
        ConfigError: ``taylor``/``obd`` without data.
        UnsupportedModelError: the dependency graph fails on a layer; the one-line message
            names it and the ``--exclude`` pattern that skips it.

    Example:
        >>> from edgeopt.models import create_model
        >>> from edgeopt.prune import PruneConfig, prune
        >>> from edgeopt.spec import ModelSpec
        >>> m = create_model("resnet20", ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3))
        >>> r = prune(m, PruneConfig(method="structured", ratio=0.3))
        >>> r.params_after < r.params_before, r.model.layer1[0].conv1.out_channels
        (True, 8)
    """
    from edgeopt.spec import get_spec

    base = copy.deepcopy(model).eval()
    example = get_spec(model).example_input(1).to(next(model.parameters()).device)
    with torch.no_grad():
        want = [t.shape for t in _tensors(model.eval()(example))]
    warnings: list[str] = []
    info: dict[str, Any] = {"importance": config.importance, "scope": config.scope,
                            "round_to": config.round_to, "target": config.target}
    blocks = _opaque_blocks(model, config.exclude)
    importance = build_importance(config.importance, model, data, config)
    ratios = {n: min(r, config.max_layer_ratio) for n, r in ratios.items()}
    if layers and any(r > 0 for r in ratios.values()):
        if config.target != "ratio":
            c, got = _search(model, config, layers, ratios, importance, example, want, blocks, warnings)
            ratios, default = _scaled(ratios, config, c)
            info.update(channel_ratio=round(c, 6), target_removed=round(got, 6))
        else:
            default = config.ratio
        frozen, kept = _prune_at(model, config, layers, ratios, default, importance, example, blocks)
        if frozen:
            names = sorted(k or "model" for k in frozen)
            ops = sorted(set().union(*frozen.values()))
            warnings.append(
                f"channels kept around ops the dependency graph cannot follow ({', '.join(ops)}) "
                f"in {len(names)} block(s): {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
            info["frozen"] = {k or "model": sorted(v) for k, v in sorted(frozen.items())}
    else:
        kept = {}
    model.zero_grad(set_to_none=True)
    model.eval()
    _check(model, example, want)
    record = make_record(base, model, kept)
    info["channels"] = {n: record["channels"].get(n, [int(base.get_submodule(n).weight.shape[0])] * 2)
                        for n in layers}
    if blocks:
        info["opaque_blocks"] = blocks
    return Pruned(model=model, record=record, info=info, warnings=warnings)
