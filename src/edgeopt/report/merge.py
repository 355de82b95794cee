"""Merge the results of runs split across machines (``edgeopt run --only``) into one."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def _machine_key(m: Any) -> tuple:
    m = m or {}
    return (m.get("cpu"), m.get("logical_cores"), m.get("torch"), m.get("onnxruntime"))


def _free_name(name: str, label: str, taken: set[str]) -> str:
    """``name``, or ``name (label)`` when taken, or ``name (label 2)``, ... : never a duplicate."""
    if name not in taken:
        return name
    candidate, n = f"{name} ({label})", 2
    while candidate in taken:
        candidate, n = f"{name} ({label} {n})", n + 1
    return candidate


def merge_results(parts: list[dict[str, Any]], labels: list[str] | None = None) -> dict[str, Any]:
    """One results dict from several: every row kept, nothing dropped.

    A variant name already taken gets `` (LABEL)`` (the file it came from). The first part's
    run name, machine, baseline, constraints and recipe are kept. When the machines differ
    (CPU, cores, torch or onnxruntime version), ``machines_differ`` is set, ``machines`` maps
    each label to its machine, and every row from a machine other than the first carries a
    ``machine`` field and a note: latencies of different machines are not comparable. The
    choice is made again over all rows when constraints are set and
    ``edgeopt.evaluate.constraints.choose`` is available (else the stale choice is dropped).

    Args:
        parts: results dicts (``edgeopt.evaluate.results``), the first one the reference.
        labels: one short name per part for suffixes and notes (default: "part 1", ...).

    Returns:
        A new dict; the parts are not changed. ``merged_from`` lists the labels.

    Example:
        >>> a = {"run": "x", "machine": {"cpu": "A"}, "variants": [{"name": "int8"}], "baseline": "int8"}
        >>> b = {"run": "x", "machine": {"cpu": "A"}, "variants": [{"name": "int8"}, {"name": "pruned"}]}
        >>> [v["name"] for v in merge_results([a, b], ["a", "b"])["variants"]]
        ['int8', 'int8 (b)', 'pruned']
    """
    if not parts:
        raise ValueError("merge_results needs at least one results dict")
    labels = list(labels) if labels else [f"part {i + 1}" for i in range(len(parts))]
    if len(labels) != len(parts):
        raise ValueError(f"merge_results got {len(parts)} parts but {len(labels)} labels")
    out = copy.deepcopy(parts[0])
    out["variants"], out["figures"] = [], []
    out.pop("elapsed_s", None)  # the parts ran side by side: no one run time
    out["merged_from"] = labels
    first_machine = _machine_key(parts[0].get("machine"))
    if any(_machine_key(p.get("machine")) != first_machine for p in parts):
        out["machines_differ"] = True
        out["machines"] = {label: copy.deepcopy(p.get("machine") or {}) for p, label in zip(parts, labels)}
    taken: set[str] = set()
    for i, (part, label) in enumerate(zip(parts, labels)):
        machine = part.get("machine") or {}
        other = _machine_key(machine) != first_machine
        if i > 0:
            out.setdefault("notes", []).extend(f"{label}: {n}" for n in part.get("notes") or [])
        for v in part.get("variants") or []:
            v = copy.deepcopy(v)
            v["name"] = _free_name(str(v.get("name", "?")), label, taken)
            taken.add(v["name"])
            if other:
                v["machine"] = copy.deepcopy(machine)
                v.setdefault("notes", []).append(
                    f"measured on another machine ({machine.get('cpu', '?')}, from {label}): "
                    "its latency is not comparable with the other rows")
            out["variants"].append(v)
        for f in part.get("figures") or []:
            if f not in out["figures"]:
                out["figures"].append(f)
    if not out["figures"]:
        del out["figures"]
    _choose_again(out)
    return out


def _choose_again(results: dict[str, Any]) -> None:
    """Make the choice over the merged rows (the parts' choices each saw only their own)."""
    cons = results.get("constraints")
    if not cons:
        results.pop("choice", None)
        return
    try:  # written beside this module by another part of issue 12; optional here
        from edgeopt.evaluate.constraints import Constraints, choose
    except ImportError:
        results.pop("choice", None)
        results.setdefault("notes", []).append("the choice was not made again over the merged rows "
                                               "(edgeopt.evaluate.constraints is not available)")
        return
    results["choice"] = choose(results, Constraints.from_dict(cons))


def _labels(paths: list[Path]) -> list[str]:
    """Short distinct names for files: their folders' names (runs/a/results.json -> "a"), else
    their file names (a.json), else the paths as given."""
    for label in (lambda p: p.parent.name, lambda p: p.name, str):
        names = [label(Path(p)) or str(p) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [f"{p} #{i + 1}" for i, p in enumerate(paths)]  # the same file given twice


def figure_paths_relative_to(results: dict[str, Any], src_dir: Path, out_dir: Path) -> None:
    """Rewrite ``results["figures"]`` paths (relative to ``src_dir``) to be relative to ``out_dir``."""
    import os

    for f in results.get("figures") or []:
        p = (src_dir / f["path"]).resolve()
        f["path"] = os.path.relpath(p, out_dir.resolve())


def write_merged_report(paths: list[Path], out_dir: Path | None = None) -> Path:
    """Load ``paths`` (results.json files), merge them and write the report; returns report.md.

    One file: its report is written again, into ``out_dir`` (default: the file's folder).
    Several: :func:`merge_results` (labels: the files' folder names, else their file names),
    and ``out_dir`` (required) gets the merged results.json beside the report. Figure paths
    are rewritten to stay valid from ``out_dir``.

    Raises:
        ConfigError: no file, several without ``out_dir``, or an ``out_dir`` whose
            results.json is one of the inputs (the merge would overwrite it).
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
    if len(parts) > 1 and any((out / "results.json").resolve() == Path(p).resolve() for p in paths):
        raise ConfigError(f"--out-dir {out} holds one of the results being merged; "
                          "give the merged report a folder of its own")
    for part, p in zip(parts, paths):
        figure_paths_relative_to(part, Path(p).parent, out)
    if len(parts) == 1:
        merged = parts[0]
    else:
        merged = merge_results(parts, _labels(paths))
        out.mkdir(parents=True, exist_ok=True)
        save_results(out / "results.json", merged)
    return write_report(merged, out)
