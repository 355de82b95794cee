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
        if data is not None or data_root is not None:
            d = dict(raw.get("data") or {})
            if data is not None:
                d["name"] = data
            if data_root is not None:
                d["root"] = data_root
            raw["data"] = d
        base = dict(raw.get("baseline") or {})
        if model is not None:
            base["model"] = {**(base.get("model") or {}), "name": model}
        if epochs is not None:
            base["train"] = {**(base.get("train") or {}), "epochs": epochs}
        raw["baseline"] = base
        if threads is not None or latency_runs is not None:
            t = dict(raw.get("target") or {})
            if threads is not None:
                t["threads"] = threads
            if latency_runs is not None:
                t["latency_runs"] = latency_runs
            raw["target"] = t

    return load_recipe(config or "demo", apply)
