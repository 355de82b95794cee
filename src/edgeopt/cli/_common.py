"""Output helpers shared by the subcommands: rich tables, JSON, key=value arguments."""

from __future__ import annotations

import json
import sys
from typing import Any

from edgeopt.errors import ConfigError


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    """A rich table on stdout (first column left-aligned, numbers right-aligned, text columns
    such as "description" left-aligned). Cells are escaped: ``[onnx, tflite]`` is text, not markup."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        text = i == 0 or h in ("description", "path", "source", "notes")
        table.add_column(escape(h), justify="left" if text else "right", overflow="fold")
    for r in rows:
        table.add_row(*[escape(str(c)) for c in r])
    console().print(table)


def emit_json(obj: Any) -> None:
    from edgeopt._io import _json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def parse_kv(items: list[str] | None, what: str = "--model-arg") -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML scalars (``0.5`` -> float)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what} expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def dump_config(cfg: Any) -> None:
    """Print the config a command would run, as YAML a user can save and pass with --config."""
    sys.stdout.write(cfg.dump("yaml"))


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def config_from(cls: Any, config_path: Any, base: dict[str, Any] | None = None, **flags: Any) -> Any:
    """``cls`` (a Config) from ``--config`` (YAML/JSON), then ``base``, then the flags given
    on the command line (a flag left at None is not given, so the file's value stays)."""
    from edgeopt.config import load_mapping

    d = dict(load_mapping(config_path)) if config_path is not None else {}
    d.update(base or {})
    d.update(drop_none(flags))
    return cls.from_dict(d)
