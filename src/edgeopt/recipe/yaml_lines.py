"""Load a recipe's YAML and remember the line of every key, so errors can name it.

``yaml.safe_load`` forgets where a value came from; a recipe error that says
``variants.small[1].prune.ratio`` is good, one that also says ``line 14`` is what a user
wants with a 100-line file open. The file is parsed twice with the safe loader: once
for the values, once (``yaml.compose``) for the node marks. A key written twice in one
mapping is an error here (``safe_load`` silently keeps the last one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, brief

#: a path into the loaded document: mapping keys and list indices
KeyPath = tuple[Any, ...]


def format_path(path: KeyPath) -> str:
    """``("variants", "small", 1, "prune")`` -> ``variants.small[1].prune``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _walk(node: Any, path: KeyPath, lines: dict[KeyPath, int], where: str) -> None:
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{where}:{line}: {format_path(path + (key,))} is given twice "
                                  f"(first at line {seen[key]}); keep one")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, where)


def load_with_lines(path: str | Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """The mapping in ``path`` (YAML, or JSON) and ``{key path: line number}``.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or repeats a key.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "r.yaml")
        >>> _ = open(p, "w").write("name: x\\nvariants:\\n  a:\\n    - prune: {ratio: 0.5}\\n")
        >>> data, lines = load_with_lines(p)
        >>> lines[("variants", "a", 0, "prune", "ratio")]
        4
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            data, node = json.loads(text), None
        else:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse {p}: {brief(exc, None)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe is a mapping (name, data, baseline, target, variants, ...), "
                          f"got {type(data).__name__}")
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, str(p))
    return data, lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path`` or of its nearest parent that has one."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]
