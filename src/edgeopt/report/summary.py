"""What the report says beyond the raw measurements: each variant against the baseline
(top-1 change, speed-up, compression), the variant chosen under the constraints, the recipe."""

from __future__ import annotations

from typing import Any

_UNITS = {"ms": " ms", "MB": " MB", "MiB": " MiB", "points": " points"}


def baseline_row(results: dict[str, Any]) -> dict[str, Any] | None:
    """The reference row: ``results["baseline"]`` (a variant name), else the first variant."""
    rows = [v for v in results.get("variants") or [] if isinstance(v, dict)]
    name = results.get("baseline")
    if name is not None:
        return next((v for v in rows if v.get("name") == name), None)
    return rows[0] if rows else None


def _num(v: Any, *keys: str) -> float | None:
    for k in keys:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def relative(v: dict[str, Any], base: dict[str, Any] | None) -> dict[str, str]:
    """The cells that compare ``v`` with ``base``: top-1 change in points, batch-1 speed-up,
    compression of the file on disk.

    Example:
        >>> b = {"accuracy": {"top1": 0.9}, "latency": {"batch1": {"median_ms": 10}}, "size": {"bytes": 4e6}}
        >>> v = {"accuracy": {"top1": 0.885}, "latency": {"batch1": {"median_ms": 4}}, "size": {"bytes": 1e6}}
        >>> relative(v, b)
        {'delta': '-1.50', 'speedup': '2.50x', 'compression': '4.00x'}
    """
    out = {"delta": "–", "speedup": "–", "compression": "–"}
    if base is None:
        return out
    a, a0 = _num(v, "accuracy", "top1"), _num(base, "accuracy", "top1")
    if a is not None and a0 is not None:
        out["delta"] = "–" if v is base else f"{100 * (a - a0):+.2f}"
    t, t0 = _num(v, "latency", "batch1", "median_ms"), _num(base, "latency", "batch1", "median_ms")
    if t and t0:
        out["speedup"] = f"{t0 / t:.2f}x"
    s, s0 = _num(v, "size", "bytes"), _num(base, "size", "bytes")
    if s and s0:
        out["compression"] = f"{s0 / s:.2f}x"
    return out


def _fmt_limit(name: str, value: float) -> str:
    if name == "min_accuracy":
        return f"{100 * value:.2f} %"
    unit = {"max_latency_ms": " ms", "max_size_mb": " MB", "max_memory_mb": " MiB", "max_drop": " points"}[name]
    return f"{value:g}{unit}"


_WORDS = {"max_latency_ms": "batch-1 median latency at most", "max_size_mb": "file size at most",
          "max_memory_mb": "model's share of peak memory at most", "min_accuracy": "top-1 at least",
          "max_drop": "top-1 drop from the baseline at most"}


def choice_lines(results: dict[str, Any]) -> list[str]:
    """The "Choice" section as plain sentences (no constraints set: none).

    Example:
        >>> r = {"constraints": {"max_drop": 1.0, "max_size_mb": None},
        ...      "choice": {"chosen": "int8", "reason": "best top-1 meeting every bound", "failures": []}}
        >>> choice_lines(r)
        ['Constraints: top-1 drop from the baseline at most 1 points.', 'Chosen: **int8**: best top-1 meeting every bound.']
    """
    cons = {k: v for k, v in (results.get("constraints") or {}).items() if v is not None and k in _WORDS}
    choice = results.get("choice")
    if not cons or not isinstance(choice, dict):
        return []
    lines = ["Constraints: " + "; ".join(f"{_WORDS[k]} {_fmt_limit(k, v)}" for k, v in cons.items()) + "."]
    if choice.get("chosen"):
        lines.append(f"Chosen: **{choice['chosen']}**: {choice.get('reason') or 'it meets every constraint'}.")
        return [ln.replace("..", ".") for ln in lines]
    lines.append(f"No variant meets the constraints: {choice.get('reason') or ''}".rstrip(": ") + ".")
    for f in choice.get("failures") or []:
        k = f.get("constraint", "?")
        unit = _UNITS.get(f.get("unit", ""), "")
        by, val = f.get("by"), f.get("value")
        if f.get("unit") == "fraction" and isinstance(by, (int, float)):
            by, val, unit = 100 * by, (100 * val if isinstance(val, (int, float)) else val), " points"
        by_s = f"{by:.4g}{unit}" if isinstance(by, (int, float)) else "?"
        val_s = f"{val:.4g}" if isinstance(val, (int, float)) else "not measured"
        lines.append(f"- {k} ({_WORDS.get(k, k)} {_fmt_limit(k, f['limit']) if 'limit' in f else '?'}) fails by "
                     f"{by_s}; closest: {f.get('closest', '?')} ({val_s})")
    return [ln.replace("..", ".") for ln in lines]


def recipe_yaml(results: dict[str, Any]) -> str | None:
    """The recipe that produced the run, as YAML (None when the results hold none)."""
    recipe = results.get("recipe")
    if not isinstance(recipe, dict):
        return None
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
