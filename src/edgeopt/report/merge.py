"""Merge the results of runs split across machines (``edgeopt run --only``) into one."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def _machine_key(m: Any) -> tuple:
    m = m or {}
    return (m.get("cpu"), m.get("logical_cores"), m.get("torch"), m.get("onnxruntime"))


def merge_results(parts: list[dict[str, Any]], labels: list[str] | None = None) -> dict[str, Any]:
    """One results dict from several: every row kept, nothing dropped.

    A variant name already taken gets `` (LABEL)`` (the file it came from). The first part's
    run name, baseline, constraints and recipe are kept; a row from another machine gets a
    note saying so and ``machines_differ`` is set: latencies of different machines are not
    comparable. The choice is made again over all rows when constraints are set.

    Example:
        >>> a = {"run": "x", "machine": {"cpu": "A"}, "variants": [{"name": "int8"}], "baseline": "int8"}
        >>> b = {"run": "x", "machine": {"cpu": "A"}, "variants": [{"name": "int8"}, {"name": "pruned"}]}
        >>> [v["name"] for v in merge_results([a, b], ["a", "b"])["variants"]]
        ['int8', 'int8 (b)', 'pruned']
    """
    if not parts:
        raise ValueError("merge_results needs at least one results dict")
    labels = labels or [f"part {i + 1}" for i in range(len(parts))]
    out = copy.deepcopy(parts[0])
    out["variants"], out["figures"] = [], []
    out["merged_from"] = labels
    first_machine = _machine_key(parts[0].get("machine"))
    taken: set[str] = set()
    for part, label in zip(parts, labels):
        other = _machine_key(part.get("machine")) != first_machine
        if other:
            out["machines_differ"] = True
        for v in part.get("variants") or []:
            v = copy.deepcopy(v)
            name = str(v.get("name", "?"))
            if name in taken:
                name = f"{name} ({label})"
            v["name"] = name
            taken.add(name)
            if other:
                v.setdefault("notes", []).append(
                    f"measured on another machine ({(part.get('machine') or {}).get('cpu', '?')}, from {label}): "
                    "its latency is not comparable with the other rows")
            out["variants"].append(v)
        for f in part.get("figures") or []:
            if f not in out["figures"]:
                out["figures"].append(f)
    if not out["figures"]:
        del out["figures"]
    cons = out.get("constraints")
    if cons:
        from edgeopt.evaluate.constraints import Constraints, apply_choice

        apply_choice(out, Constraints.from_dict(cons))
    return out


def figure_paths_relative_to(results: dict[str, Any], src_dir: Path, out_dir: Path) -> None:
    """Rewrite ``results["figures"]`` paths (relative to ``src_dir``) to be relative to ``out_dir``."""
    import os

    for f in results.get("figures") or []:
        p = (src_dir / f["path"]).resolve()
        f["path"] = os.path.relpath(p, out_dir.resolve())


def write_merged_report(paths: list[Path], out_dir: Path | None = None) -> Path:
    """Load ``paths`` (results.json files), merge them and write the report; returns report.md.

    Raises:
        ConfigError: no file, or several without ``out_dir``.
        ArtifactError: a file is missing, not JSON or not a results file (one line).
    """
    from edgeopt.errors import ConfigError
    from edgeopt.evaluate.results import load_results, save_results
    from edgeopt.report.markdown import write_report

    if not paths:
        raise ConfigError("give at least one results.json")
    if len(paths) > 1 and out_dir is None:
        raise ConfigError("merging several results needs --out-dir (the merged report's folder)")
    parts = [load_results(p) for p in paths]
    out = Path(out_dir) if out_dir is not None else Path(paths[0]).parent
    for part, p in zip(parts, paths):
        figure_paths_relative_to(part, Path(p).parent, out)
    if len(parts) == 1:
        merged = parts[0]
    else:
        labels = [Path(p).parent.name or str(p) for p in paths]
        merged = merge_results(parts, labels)
        out.mkdir(parents=True, exist_ok=True)
        save_results(out / "results.json", merged)
    return write_report(merged, out)
