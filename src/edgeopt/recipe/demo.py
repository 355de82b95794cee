"""The demo: the shipped ``demo`` recipe (recipes/demo.yaml), with the demo command's flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.recipe.schema import Recipe, load_recipe


def demo_recipe(*, config: str | Path | None = None, out_dir: str | None = None, data: str | None = None,
                data_root: str | None = None, model: str | None = None, epochs: int | None = None,
                threads: int | None = None, latency_runs: int | None = None) -> Recipe:
    """The recipe ``edgeopt demo`` runs: ``config`` (default: the shipped demo) and the overrides.

    Example:
        >>> demo_recipe(epochs=2, out_dir="runs/d").baseline.train["epochs"]
        2
    """

    def apply(raw: dict[str, Any]) -> None:
        if out_dir is not None:
            raw["out_dir"] = out_dir
        _update(raw, "data", name=data, root=data_root)
        base = raw["baseline"] = dict(raw.get("baseline") or {})
        _update(base, "model", name=model)
        _update(base, "train", epochs=epochs)
        _update(raw, "target", threads=threads, latency_runs=latency_runs)

    return load_recipe(config or "demo", apply)


def _update(raw: dict[str, Any], key: str, **values: Any) -> None:
    """Set the given (not None) fields of the mapping ``raw[key]``, keeping its others."""
    values = {k: v for k, v in values.items() if v is not None}
    if values:
        raw[key] = {**(raw.get(key) or {}), **values}
