"""Per-layer sparsity tables: read, write, and a template to fill in.

A table says how much of each layer to prune; it becomes ``PruneConfig.layer_ratios``.
Inside edgeopt a value is always the **sparsity**, the fraction of weights removed
(channels for structured pruning). Files come in two shapes:

* CSV with a header. The first column is the layer (header ``layer``, ``name`` or
  ``layer_name``); the second says what its numbers mean:

  - fraction **removed**: ``sparsity``, ``ratio``, ``prune_ratio``, ``pruning_ratio``,
    ``pruned``;
  - fraction **kept** (e.g. the Edge-AI repository's tables): ``kept``, ``keep``,
    ``keep_ratio``, ``kept_ratio``, ``density``; read as ``sparsity = 1 - kept``.

  Further columns (e.g. ``note``) are ignored; lines starting with ``#`` are comments; a
  value may be written as a percentage (``50%``). Any other header is a one-line
  ConfigError listing the accepted ones.
* YAML (or JSON): ``{layer: sparsity}``; or one top-level key from the lists above
  holding that mapping (``kept: {layer: fraction}``, ``layer_ratios: {...}``).

Layer names may be patterns (``features.*``, ``re:.*conv.*``). Names are checked against
the model when pruning starts (:func:`edgeopt.prune.layers.resolve_layer_ratios`): a name
that matches no layer is a one-line error listing the nearest names.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from edgeopt._io import write_text_atomic
from edgeopt.errors import ConfigError

#: CSV headers of the layer column
LAYER_HEADERS = ("layer", "name", "layer_name")
#: headers whose values are the fraction of weights removed
REMOVED_HEADERS = ("sparsity", "ratio", "prune_ratio", "pruning_ratio", "pruned", "layer_ratios")
#: headers whose values are the fraction of weights kept (sparsity = 1 - value)
KEPT_HEADERS = ("kept", "keep", "keep_ratio", "kept_ratio", "density")
_CSV_VALUE_HEADERS = tuple(h for h in REMOVED_HEADERS if h != "layer_ratios") + KEPT_HEADERS


def _accepted() -> str:
    return (f"'layer,<value>' with <value> one of {', '.join(_CSV_VALUE_HEADERS[:5])} (fraction removed) "
            f"or {', '.join(KEPT_HEADERS)} (fraction kept)")


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: {raw!r} is not a number")
    text = str(raw).strip()
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1].strip(), 0.01
    try:
        value = float(text) * scale
    except ValueError:
        raise ConfigError(f"{where}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {raw!r} is not a finite number")
    return value


def _to_sparsity(value: float, kept: bool, where: str) -> float:
    sparsity = 1.0 - value if kept else value
    if not 0.0 <= value <= 1.0 or not 0.0 <= sparsity < 1.0:
        what = "kept fraction" if kept else "sparsity"
        limit = "(0, 1]" if kept else "[0, 1)"
        raise ConfigError(f"{where}: {what} {value!r} must be in {limit} (a layer cannot lose every weight)")
    return round(sparsity, 12)  # 1 - 0.3 is 0.7000000000000001: keep tables readable


def read_sparsity_table(path: str | Path) -> dict[str, float]:
    """Read a per-layer table as ``{layer or pattern: sparsity}`` (fraction removed).

    Args:
        path: a ``.csv`` (header ``layer,sparsity``, ``layer,kept``, ... see the module
            docstring), ``.yaml``/``.yml`` or ``.json`` file.

    Returns:
        The table in file order, values in ``[0, 1)``.

    Raises:
        ConfigError: a missing file, an unknown extension or CSV header (the message lists
            the accepted headers), a value that is not a fraction, a layer named twice.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = p.write_text("layer,kept\\nconv1,0.3\\nfc,100%\\n")
        >>> read_sparsity_table(p)
        {'conv1': 0.7, 'fc': 0.0}
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sparsity table not found: {p}")
    suffix = p.suffix.lower()
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text: {exc}") from None
    if suffix == ".csv":
        return _read_csv(text, p)
    if suffix in (".yaml", ".yml", ".json"):
        return _read_mapping(text, p)
    raise ConfigError(f"sparsity table {p}: unknown extension {p.suffix!r}; use .csv, .yaml, .yml or .json")


def _read_csv(text: str, p: Path) -> dict[str, float]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    if not rows:
        raise ConfigError(f"sparsity table {p} is empty; expected a header {_accepted()}")
    header = [h.strip().lower() for h in rows[0]]
    if len(header) < 2 or header[0] not in LAYER_HEADERS or header[1] not in _CSV_VALUE_HEADERS:
        raise ConfigError(f"sparsity table {p}: unknown header {','.join(rows[0])!r}; accepted: {_accepted()}")
    kept = header[1] in KEPT_HEADERS
    out: dict[str, float] = {}
    first_row: dict[str, int] = {}
    for i, row in enumerate(rows[1:], start=2):
        where = f"{p.name} row {i}"
        if len(row) < 2 or not row[0].strip():
            raise ConfigError(f"{where}: expected 'layer,{header[1]}', got {','.join(row)!r}")
        name = row[0].strip()
        if name in out:
            raise ConfigError(f"{where}: layer {name!r} is already given in row {first_row[name]}")
        out[name] = _to_sparsity(_number(row[1], where), kept, f"{where} ({name})")
        first_row[name] = i
    return out


def _read_mapping(text: str, p: Path) -> dict[str, float]:
    import yaml

    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"sparsity table {p} cannot be parsed: {str(exc).splitlines()[0]}") from None
    kept = False
    if isinstance(data, Mapping) and len(data) == 1:
        (key, inner), = data.items()
        if isinstance(inner, Mapping) and str(key).lower() in REMOVED_HEADERS + KEPT_HEADERS:
            data, kept = inner, str(key).lower() in KEPT_HEADERS
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"sparsity table {p} must be a mapping {{layer: sparsity}} (or kept: {{layer: kept}})")
    return {str(k): _to_sparsity(_number(v, f"{p.name}: {k}"), kept, f"{p.name}: {k}") for k, v in data.items()}


def write_sparsity_table(path: str | Path, table: Mapping[str, float], *,
                         comments: Mapping[str, str] | None = None) -> Path:
    """Write ``{layer: sparsity}`` atomically as CSV (``layer,sparsity``) or YAML.

    Args:
        path: ``.csv``, ``.yaml``/``.yml`` or ``.json`` (by extension).
        table: fractions removed, in ``[0, 1)``.
        comments: ``{layer: text}`` written beside the layer (a ``#`` line above its CSV
            row, a trailing ``#`` comment in YAML; JSON has none).

    Returns:
        ``path`` as a Path; :func:`read_sparsity_table` reads it back unchanged.

    Raises:
        ConfigError: an unknown extension or a value outside ``[0, 1)``.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_sparsity_table(pathlib.Path(tempfile.mkdtemp()) / "t.yaml", {"0": 0.5})
        >>> p.read_text()
        '"0": 0.5\\n'
        >>> read_sparsity_table(p)
        {'0': 0.5}
    """
    p = Path(path)
    comments = dict(comments or {})
    clean = {str(k): _to_sparsity(_number(v, f"table entry {k}"), False, f"table entry {k}")
             for k, v in table.items()}
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return write_text_atomic(p, _csv_text(clean, comments))
    if suffix in (".yaml", ".yml"):
        return write_text_atomic(p, _yaml_text(clean, comments))
    if suffix == ".json":
        return write_text_atomic(p, json.dumps(clean, indent=2) + "\n")
    raise ConfigError(f"sparsity table {p}: unknown extension {p.suffix!r}; use .csv, .yaml, .yml or .json")


def _fmt(v: float) -> str:
    return repr(round(float(v), 6))


def _csv_text(table: Mapping[str, float], comments: Mapping[str, str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "sparsity"])
    for name, v in table.items():
        if comments.get(name):
            buf.write(f"# {name}: {comments[name]}\n")
        w.writerow([name, _fmt(v)])
    return buf.getvalue()


def _yaml_text(table: Mapping[str, float], comments: Mapping[str, str]) -> str:
    # Keys are JSON-quoted: an unquoted YAML key "0" or "1.0" would read back as a number.
    lines = []
    for name, v in table.items():
        note = f"  # {comments[name]}" if comments.get(name) else ""
        lines.append(f"{json.dumps(name)}: {_fmt(v)}{note}")
    return "\n".join(lines) + "\n"


def template(model: nn.Module, config: Any = None, path: str | Path | None = None) -> Path | str:
    """A table listing every prunable layer, to edit and pass back as ``layer_ratios``.

    Chosen layers get the ratio ``config`` gives them (its ``layer_ratios`` entry, else
    ``ratio``); protected, excluded and not-included layers get 0 with a comment saying
    why (pruning leaves them alone whatever the table says).

    Args:
        model: the model whose Conv/Linear layers are listed, in model order.
        config: a :class:`~edgeopt.prune.PruneConfig` (default: ``PruneConfig()``).
        path: where to write it (``.csv``, ``.yaml``, ``.json``); None: return YAML text.

    Returns:
        The written path, or the YAML text when ``path`` is None.

    Raises:
        ConfigError: ``config`` names a layer or pattern the model does not have.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 2))
        >>> print(template(m), end="")
        "0": 0.0  # protected (first layer): not pruned
        "1": 0.5
        "3": 0.0  # protected (last layer): not pruned
    """
    from edgeopt.prune.config import PruneConfig
    from edgeopt.prune.layers import prunable_layers, resolve_layer_ratios, select_layers

    cfg = config or PruneConfig()
    names = prunable_layers(model)
    chosen, protected = select_layers(model, cfg.include, cfg.exclude, cfg.protect_first_last)
    ratios = resolve_layer_ratios(chosen, cfg.layer_ratios, cfg.ratio, all_names=names)
    table, comments = {}, {}
    for n in names:
        table[n] = ratios.get(n, 0.0)
        if n in protected:
            comments[n] = f"protected ({protected[n]}): not pruned"
        elif n not in ratios:
            comments[n] = "not in include: not pruned"
    if path is None:
        return _yaml_text(table, comments)
    return write_sparsity_table(path, table, comments=comments)
