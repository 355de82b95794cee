"""Layer names and patterns, shared by every step that chooses layers (DESIGN habit 3).

A layer is named by its qualified name (``features.3.conv.0.0``) or a pattern: a plain
name also matches the layers inside it (``features.1`` matches ``features.1.conv.0``),
``*``/``?``/``[`` glob (``features.0.*``), ``re:`` starts a full-match regular expression
(``re:.*classifier.*``). Quantization (``keep_float``) and pruning (``include``,
``exclude``, sparsity tables) read patterns through these functions, so they mean the same
everywhere.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Sequence

from edgeopt.errors import ConfigError


def matches(name: str, pattern: str) -> bool:
    """True when ``pattern`` names layer ``name`` (itself, a module holding it, a glob, a regex).

    Example:
        >>> [matches("features.1.conv.0", p) for p in ("features.1", "features.*", "re:feat.*", "features.10")]
        [True, True, True, False]
    """
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern + ".")


def near_names(name: str, names: Sequence[str], n: int = 4) -> str:
    """``'a, b, c'``: the names most like ``name`` (for "did you mean" errors).

    Example:
        >>> near_names("layer1.0.conv3", ["layer1.0.conv1", "layer1.0.conv2", "fc"])
        'layer1.0.conv2, layer1.0.conv1, ...'
    """
    close = difflib.get_close_matches(name, list(names), n=n, cutoff=0.4)
    if not close:
        close = list(names)[:n]
    return ", ".join(close) + (", ..." if len(names) > len(close) else "")


def match_names(names: Sequence[str], patterns: Iterable[str], what: str, kind: str = "layer") -> list[str]:
    """The ``names`` matched by any of ``patterns``, in ``names`` order.

    Raises:
        ConfigError: a pattern matches no name (one line naming the ``kind`` and the nearest
            names), or a regular expression does not compile.

    Example:
        >>> match_names(["conv1", "layer1.0.conv1", "fc"], ["layer1", "re:f."], "include")
        ['layer1.0.conv1', 'fc']
    """
    chosen: set[str] = set()
    for pat in patterns:
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as exc:
                raise ConfigError(f"{what}: bad regular expression {pat!r}: {exc}") from None
        hits = [n for n in names if matches(n, pat)]
        if not hits:
            raise ConfigError(f"{what}: pattern {pat!r} matches no {kind}; nearest: {near_names(pat, names)}")
        chosen.update(hits)
    return [n for n in names if n in chosen]
