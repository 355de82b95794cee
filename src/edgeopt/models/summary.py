"""Parameter counts and a per-layer summary (for the ``edgeopt models`` table)."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters; a tied (shared) tensor counts once.

    Example:
        >>> count_parameters(nn.Linear(10, 3))
        33
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_summary(model: nn.Module) -> list[dict]:
    """Rows ``{"name", "type", "params"}`` for every module that owns parameters directly.

    ``params`` counts only the module's own parameters (not its children's), so the rows
    add up to :func:`count_parameters` (tied tensors are counted where first seen).

    Example:
        >>> rows = model_summary(nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
        >>> rows
        [{'name': '0', 'type': 'Linear', 'params': 10}]
    """
    seen: set[int] = set()
    rows = []
    for name, module in model.named_modules():
        own = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                own += p.numel()
        if own:
            rows.append({"name": name or "(root)", "type": type(module).__name__, "params": own})
    return rows
