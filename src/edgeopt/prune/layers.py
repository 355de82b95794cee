"""Which layers are pruned: prunable layers, include/exclude patterns, protected layers.

Layers are named by qualified name or pattern (DESIGN habit 3), never by module objects,
so a recipe, a sparsity table and a CLI flag all say the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.layer_patterns import match_names, matches, near_names

#: Module types whose ``weight`` is pruned. Conv covers 1d/2d/3d and transposed.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the Conv/Linear layers with a weight, in definition order.

    Example:
        >>> from torch import nn
        >>> prunable_layers(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)))
        ['0', '3']
    """
    return [n for n, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and getattr(m, "weight", None) is not None]


def match_patterns(names: Sequence[str], patterns: Iterable[str], what: str) -> list[str]:
    """The ``names`` matched by any of ``patterns`` (:mod:`edgeopt.layer_patterns`); a pattern
    matching nothing is a one-line ConfigError listing the nearest names.

    Example:
        >>> match_patterns(["conv1", "layer1.0.conv1", "fc"], ["layer1", "re:f."], "include")
        ['layer1.0.conv1', 'fc']
    """
    return match_names(names, patterns, what, kind="prunable layer")


def select_layers(
    model: nn.Module,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    protect_first_last: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The layers to prune, and the prunable layers left alone with the reason.

    Returns:
        ``(chosen, protected)``: chosen names in model order; ``{name: reason}``.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 2))
        >>> select_layers(m)
        (['1'], {'0': 'first layer', '3': 'last layer'})
    """
    names = prunable_layers(model)
    if not names:
        raise ConfigError("the model has no Conv or Linear layer with weights to prune")
    protected: dict[str, str] = {}
    if protect_first_last:
        protected[names[0]] = "first layer"
        protected.setdefault(names[-1], "last layer")
    chosen = match_patterns(names, include, "include") if include else list(names)
    for n in match_patterns(names, exclude, "exclude") if exclude else []:
        protected.setdefault(n, "excluded")
    return [n for n in chosen if n not in protected], protected


def resolve_layer_ratios(
    names: Sequence[str], ratios: Mapping[str, float] | None, default: float,
    all_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """``{layer: ratio}`` for ``names``: the table's entry (name or pattern) or ``default``.

    A later table entry wins over an earlier one. A name in the table that matches no layer
    of the model (``all_names``) is a one-line error listing the nearest names.

    Example:
        >>> resolve_layer_ratios(["a.0", "a.1", "b"], {"a.*": 0.5, "a.1": 0.7}, 0.2)
        {'a.0': 0.5, 'a.1': 0.7, 'b': 0.2}
    """
    out = {n: default for n in names}
    universe = list(all_names) if all_names is not None else list(names)
    for pat, r in (ratios or {}).items():
        hits = [n for n in universe if matches(n, pat)]
        if not hits:
            raise ConfigError(
                f"sparsity table: layer {pat!r} does not exist in the model; nearest: "
                f"{near_names(pat, universe)}"
            )
        for n in hits:
            if n in out:
                out[n] = float(r)
    return out
