"""Magnitude pruning: zero the smallest-|w| weights, per layer (local) or across layers (global).

Counts are exact: a layer with ratio ``r`` and ``n`` weights loses ``round(r * n)`` of them
(local); the chosen layers together lose ``round(sum(r_l * n_l))`` (global, one threshold).
Ties at the threshold are broken by position (layer order, then flat index), so the same
weights always give the same masks. The gradual schedule calls :func:`magnitude_masks` with
rising ratios; weights already zero are the smallest, so its masks only grow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.prune._base import Pruned
from edgeopt.prune.masks import apply_masks_


def smallest_k(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Bool masks (shaped like each score tensor), True on the ``k`` smallest scores overall.

    Exactly ``k`` are marked: ties at the k-th value go to the earliest positions (tensor
    order, then flat index), so the answer is deterministic.

    Example:
        >>> [m.tolist() for m in smallest_k([torch.tensor([3., 1.]), torch.tensor([1., 0.])], 2)]
        [[False, True], [False, True]]
        >>> smallest_k([torch.tensor([2., 2., 2.])], 2)[0].tolist()
        [True, True, False]
    """
    flat = torch.cat([s.detach().reshape(-1) for s in scores]) if scores else torch.zeros(0)
    k = int(k)
    if not 0 <= k <= flat.numel():
        raise ConfigError(f"cannot remove {k} of {flat.numel()} weights")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        # kthvalue avoids a full sort of (possibly millions of) scores
        t = torch.kthvalue(flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat, k).values
        below = flat < t
        chosen |= below
        need = k - int(below.sum())
        if need > 0:
            chosen[torch.nonzero(flat == t).reshape(-1)[:need]] = True
    out, start = [], 0
    for s in scores:
        out.append(chosen[start:start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


def removal_count(numel: int, ratio: float) -> int:
    """Weights a layer of ``numel`` loses at ``ratio``: ``round(ratio * numel)``.

    Example:
        >>> removal_count(10, 0.25), removal_count(9, 0.5)
        (2, 4)
    """
    return round(float(ratio) * int(numel))


@torch.no_grad()
def magnitude_masks(model: nn.Module, ratios: Mapping[str, float],
                    scope: str = "local") -> dict[str, torch.Tensor]:
    """Keep-masks that remove the smallest-magnitude weights of the layers in ``ratios``.

    Args:
        model: the model; it is not changed.
        ratios: ``{layer name: fraction of its weights to remove}``, in ``[0, 1]``.
        scope: ``local``: each layer loses ``round(ratio * numel)`` of its own smallest
            weights; ``global``: one threshold across the layers removes
            ``round(sum(ratio_l * numel_l))`` weights in all, wherever they are smallest.

    Returns:
        ``{layer: bool tensor shaped like its weight, True = kept}``.

    Raises:
        ConfigError: an unknown scope, or a ratio outside ``[0, 1]``.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        >>> masks = magnitude_masks(m, {"0": 0.5, "1": 0.25})
        >>> [int((~k).sum()) for k in masks.values()]
        [8, 4]
        >>> sum(int((~k).sum()) for k in magnitude_masks(m, {"0": 0.5, "1": 0.25}, "global").values())
        12
    """
    if scope not in ("local", "global"):
        raise ConfigError(f"magnitude_masks: scope must be 'local' or 'global', got {scope!r}")
    for name, r in ratios.items():
        if not 0.0 <= float(r) <= 1.0:
            raise ConfigError(f"magnitude_masks: ratio of {name!r} is {r!r}, not in [0, 1]")
    names = list(ratios)
    scores = [model.get_submodule(n).weight.detach().abs() for n in names]
    if scope == "local":
        removed = [smallest_k([s], removal_count(s.numel(), ratios[n]))[0] for n, s in zip(names, scores)]
    else:
        k = round(sum(float(ratios[n]) * s.numel() for n, s in zip(names, scores)))
        removed = smallest_k(scores, k)
    return {n: ~r for n, r in zip(names, removed)}


def METHOD(model: nn.Module, config: Any, layers: list[str], ratios: dict[str, float],
           data: Any = None, progress: bool = False) -> Pruned:
    """Magnitude-prune ``model`` in place (the registry's ``unstructured`` method).

    Args:
        model: the copy :func:`edgeopt.prune.prune` made.
        config: the PruneConfig (``scope`` is read).
        layers: the chosen layers, in model order.
        ratios: ``{layer: fraction removed}`` for ``layers``.
        data: unused (magnitude needs no data).
        progress: unused (magnitude pruning is one pass).

    Returns:
        ``Pruned`` with the keep-masks; ``info`` holds the scope and, for ``global``, the
        threshold and the per-layer fractions it removed.

    Example:
        >>> from torch import nn
        >>> from edgeopt.prune.config import PruneConfig
        >>> m = nn.Sequential(nn.Linear(4, 4))
        >>> out = METHOD(m, PruneConfig(ratio=0.5), ["0"], {"0": 0.5})
        >>> int((m[0].weight == 0).sum())
        8
    """
    scope = getattr(config, "scope", "local")
    chosen = {n: ratios[n] for n in layers if n in ratios}
    masks = magnitude_masks(model, chosen, scope)
    apply_masks_(model, masks)
    info: dict[str, Any] = {"scope": scope}
    warnings: list[str] = []
    if scope == "global" and masks:
        removed = {n: 1.0 - float(m.float().mean()) for n, m in masks.items()}
        info["layer_sparsity"] = {n: round(r, 6) for n, r in removed.items()}
        kept = [model.get_submodule(n).weight.detach().abs()[m] for n, m in masks.items() if m.any()]
        info["threshold"] = float(min(float(k.min()) for k in kept if k.numel())) if kept else None
        emptied = [n for n, m in masks.items() if not m.any()]
        if emptied:
            warnings.append(
                f"global magnitude pruning removed every weight of {', '.join(emptied)}; "
                f"use scope='local', exclude it, or give it a lower ratio in layer_ratios"
            )
    return Pruned(model=model, masks=masks, info=info, warnings=warnings)
