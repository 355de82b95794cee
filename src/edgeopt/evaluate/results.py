"""The one JSON schema of machine-readable results (``results.json``).

Top level::

    {
      "schema_version": 1,
      "edgeopt_version": "0.1.0",
      "run": "demo",                       # the run's name
      "created": "2026-05-09T07:35:25+00:00",
      "machine": {...},                    # edgeopt.evaluate.machine_info()
      "config": {...},                     # the run's config as a dict
      "variants": [VariantResult, ...],
      "figures": [{"title": str, "path": str, "caption": str}, ...]   # optional
    }

``figures`` (optional) are extra PNGs for the report, e.g. int8 weight histograms; each
``path`` is relative to the report's folder and ``caption`` may be left out.

A VariantResult (one row of the report; built by ``evaluate_variant``)::

    {
      "name": "fp32 onnx", "format": "onnx", "runtime": "onnxruntime", "precision": "fp32",
      "artifact": "runs/demo/artifacts/model_fp32.onnx" | null,
      "lineage": [{"step": "train"}, {"step": "export", "format": "onnx"}],
      "split": "test",
      "accuracy": {"top1", "top5", "n", "per_class", "confusion", ...} | null,
      "latency": {"batch1": {"median_ms", "p90_ms", "p99_ms", ...},
                  "throughput": {... "throughput": images/s, "batch_size"} | null},
      "size": {"bytes", "gzip_bytes", "params", "nonzero_params", ...} | null,
      "macs": {"total_macs", "total_flops", ...} | null,
      "memory": {"peak_rss_mb", "baseline_mb", "delta_mb", ...} | null,
      "energy": {"total_uJ", "compute_uJ", "memory_uJ", "label", ...} | null,
      "parity": {...}   # optional: export parity report
      "notes": [str, ...]   # anything skipped or failed, one line each
    }

A measurement that was not taken is ``null`` and says why in ``notes``; nothing is ever
filled in with a guess.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from edgeopt._io import write_text_atomic
from edgeopt.errors import ArtifactError

RESULTS_SCHEMA_VERSION = 1

TOP_LEVEL_KEYS = ("schema_version", "edgeopt_version", "run", "created", "machine", "config", "variants")
VARIANT_KEYS = (
    "name", "format", "runtime", "precision", "artifact", "lineage",
    "accuracy", "latency", "size", "macs", "memory", "energy", "notes",
)
# Sections that are a dict when measured and null when not.
_SECTIONS = ("accuracy", "latency", "size", "macs", "memory", "energy")


def new_results(run_name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """An empty results dict for a run, with the machine it runs on.

    Args:
        run_name: the run's name (shown in the report's title).
        config: the run's configuration as a plain dict (recorded verbatim).

    Returns:
        ``{"schema_version", "edgeopt_version", "run", "created", "machine", "config", "variants": []}``.

    Example:
        >>> r = new_results("demo", {"epochs": 1})
        >>> r["schema_version"], r["variants"]
        (1, [])
    """
    import edgeopt
    from edgeopt.evaluate.machine import machine_info

    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "edgeopt_version": edgeopt.__version__,
        "run": str(run_name),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": dict(config or {}),
        "variants": [],
    }


def new_variant(name: str, **fields: Any) -> dict[str, Any]:
    """A VariantResult with every required key (unmeasured sections are None).

    Example:
        >>> v = new_variant("fp32 onnx", format="onnx", runtime="onnxruntime")
        >>> v["accuracy"] is None and v["notes"] == []
        True
    """
    v: dict[str, Any] = {
        "name": name, "format": "unknown", "runtime": "unknown", "precision": "fp32",
        "artifact": None, "lineage": [], "split": "test",
        "accuracy": None, "latency": None, "size": None, "macs": None, "memory": None,
        "energy": None, "notes": [],
    }
    v.update(fields)
    return v


def add_variant(results: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """Append a validated variant; one with the same name is replaced (a re-run re-measures).

    Example:
        >>> r = {"variants": []}
        >>> _ = add_variant(r, new_variant("a"))
        >>> _ = add_variant(r, new_variant("a", runtime="torch"))
        >>> [v["runtime"] for v in r["variants"]]
        ['torch']
    """
    _validate_variant(variant, where=f"variant {variant.get('name')!r}")
    variants = results.setdefault("variants", [])
    for i, v in enumerate(variants):
        if v.get("name") == variant["name"]:
            variants[i] = variant
            return results
    variants.append(variant)
    return results


def _err(msg: str) -> ArtifactError:
    return ArtifactError(msg)


def _check_finite(obj: Any, where: str) -> None:
    """NaN/Inf are not JSON: refuse them instead of writing a file other tools reject."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise _err(f"{where} is {obj}; results must hold finite numbers (use null for 'not measured')")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def _validate_variant(v: Any, where: str) -> None:
    if not isinstance(v, dict):
        raise _err(f"{where} must be a mapping")
    missing = [k for k in VARIANT_KEYS if k not in v]
    if missing:
        raise _err(f"{where} lacks key(s) {', '.join(missing)}")
    if not isinstance(v["name"], str) or not v["name"]:
        raise _err(f"{where}: name must be a non-empty string")
    for k in _SECTIONS:
        if v[k] is not None and not isinstance(v[k], dict):
            raise _err(f"{where}: {k} must be a mapping or null")
    if not isinstance(v["lineage"], list) or not isinstance(v["notes"], list):
        raise _err(f"{where}: lineage and notes must be lists")
    acc = v["accuracy"]
    if acc is not None and not isinstance(acc.get("top1"), (int, float)):
        raise _err(f"{where}: accuracy.top1 must be a number")
    _check_finite(v, where)


def _validate_figures(figures: Any) -> None:
    if figures is None:
        return
    if not isinstance(figures, list):
        raise _err("results figures must be a list of {title, path, caption?}")
    for i, f in enumerate(figures):
        if not isinstance(f, dict) or not isinstance(f.get("title"), str) or not isinstance(f.get("path"), str):
            raise _err(f"figures[{i}] must be a mapping with string title and path")
        if not isinstance(f.get("caption", ""), str):
            raise _err(f"figures[{i}]: caption must be a string")


def validate_results(d: Any) -> dict[str, Any]:
    """Check a results dict against the schema; returns it unchanged.

    Raises:
        ArtifactError: one line naming the first problem (a foreign file, a newer schema,
            a missing key, a duplicate variant name, a NaN).

    Example:
        >>> validate_results({"schema_version": 1})  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ArtifactError: results lack key(s) edgeopt_version, ...
    """
    if not isinstance(d, dict) or "schema_version" not in d:
        raise _err("not an edgeopt results file (no schema_version at the top level)")
    version = d["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise _err(f"results schema_version must be an integer, got {version!r}")
    if version > RESULTS_SCHEMA_VERSION:
        raise _err(
            f"results schema_version {version} is newer than this edgeopt understands "
            f"({RESULTS_SCHEMA_VERSION}); upgrade edgeopt"
        )
    if version < 1:
        raise _err(f"results schema_version {version} is not a valid version")
    missing = [k for k in TOP_LEVEL_KEYS if k not in d]
    if missing:
        raise _err(f"results lack key(s) {', '.join(missing)}")
    if not isinstance(d["machine"], dict) or not isinstance(d["config"], dict):
        raise _err("results machine and config must be mappings")
    if not isinstance(d["variants"], list):
        raise _err("results variants must be a list")
    _validate_figures(d.get("figures"))
    seen: set[str] = set()
    for i, v in enumerate(d["variants"]):
        _validate_variant(v, where=f"variants[{i}]")
        if v["name"] in seen:
            raise _err(f"variants[{i}]: duplicate variant name {v['name']!r}")
        seen.add(v["name"])
    return d


def _nonfinite_to_null(obj: Any, where: str, found: list[str]) -> Any:
    """A copy with NaN/Inf floats replaced by None; ``found`` collects where they were."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(f"{where} was {obj}")
        return None
    if isinstance(obj, dict):
        return {k: _nonfinite_to_null(v, f"{where}.{k}", found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nonfinite_to_null(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def save_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Validate and write results as JSON, atomically (temporary file, then rename).

    JSON has no NaN or Inf. Rather than lose a finished run at the last step, a non-finite
    number (e.g. an SQNR of inf for identical outputs) is written as null and the variant's
    ``notes`` (or the top-level ``notes``) say which field it was.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "results.json"
        >>> _ = save_results(p, new_results("demo"))
        >>> load_results(p)["run"]
        'demo'
    """
    results = json.loads(json.dumps(results, default=_json_default))  # plain JSON values, a copy
    variants = []
    for i, v in enumerate(results.get("variants", []) if isinstance(results, dict) else []):
        found: list[str] = []
        v = _nonfinite_to_null(v, f"variants[{i}]", found)
        if found and isinstance(v, dict) and isinstance(v.get("notes"), list):
            v["notes"] += [f"{f}; written as null (JSON has no NaN/Inf)" for f in found]
        variants.append(v)
    if isinstance(results, dict) and "variants" in results:
        found = []
        results = _nonfinite_to_null({**results, "variants": []}, "results", found)
        results["variants"] = variants
        if found:
            results.setdefault("notes", []).extend(f"{f}; written as null" for f in found)
    validate_results(results)
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results file.

    Raises:
        ArtifactError: the file is missing, not JSON, or not an edgeopt results file.

    Example:
        >>> load_results("/nonexistent/results.json")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ArtifactError: results file not found: /nonexistent/results.json
    """
    p = Path(path)
    if not p.is_file():
        raise _err(f"results file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _err(f"{p} is not a JSON results file: {' '.join(str(exc).split())}") from None
    try:
        return validate_results(data)
    except ArtifactError as exc:
        raise _err(f"{p}: {exc}") from None


def _json_default(obj: Any) -> Any:
    import dataclasses

    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to a results file")
