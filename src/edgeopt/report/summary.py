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


def _failure_line(f: dict[str, Any]) -> str:
    """One failing constraint: its bound, the variant closest to it and by how much it misses."""
    k = f.get("constraint", "?")
    unit = _UNITS.get(f.get("unit", ""), "")
    by, val = f.get("by"), f.get("value")
    val_unit = unit
    if f.get("unit") == "fraction":  # min_accuracy: top-1 as a fraction -> percent, points
        by = 100 * by if isinstance(by, (int, float)) else by
        val = 100 * val if isinstance(val, (int, float)) else val
        unit, val_unit = " points", " %"
    limit = _fmt_limit(k, f["limit"]) if k in _WORDS and isinstance(f.get("limit"), (int, float)) else "?"
    if f.get("closest") is None:
        return f"- {k} ({_WORDS.get(k, k)} {limit}): no variant has the measurement it needs"
    by_s = f"{by:.4g}{unit}" if isinstance(by, (int, float)) else "?"
    val_s = f"{val:.4g}{val_unit}" if isinstance(val, (int, float)) else "not measured"
    return f"- {k} ({_WORDS.get(k, k)} {limit}) fails by {by_s}; closest: {f['closest']} at {val_s}"


_NONE = "no variant meets every constraint"


def choice_lines(results: dict[str, Any]) -> list[str]:
    """The "Choice" section as plain sentences, then (when nothing meets the constraints) one
    ``"- "`` line per failing constraint; no constraints or no choice: ``[]``.

    Example:
        >>> r = {"constraints": {"max_drop": 1.0, "max_size_mb": None},
        ...      "choice": {"chosen": "int8", "reason": "best top-1 meeting every bound", "failures": []}}
        >>> choice_lines(r)
        ['Constraints: top-1 drop from the baseline at most 1 points.', 'Chosen: **int8**: best top-1 meeting every bound.']
        >>> r["choice"] = {"chosen": None, "reason": "none does", "failures": [{"constraint": "max_drop",
        ...     "limit": 1.0, "closest": "int8", "value": 1.5, "by": 0.5, "unit": "points"}]}
        >>> choice_lines(r)[1:]
        ['No variant meets the constraints; none does.', '- max_drop (top-1 drop from the baseline at most 1 points) fails by 0.5 points; closest: int8 at 1.5 points']
    """
    cons = {k: v for k, v in (results.get("constraints") or {}).items()
            if k in _WORDS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    choice = results.get("choice")
    if not cons or not isinstance(choice, dict):
        return []

    def sentence(text: str) -> str:
        return text.rstrip(". ") + "."

    lines = [sentence("Constraints: " + "; ".join(f"{_WORDS[k]} {_fmt_limit(k, v)}" for k, v in cons.items()))]
    if choice.get("chosen"):
        lines.append(sentence(f"Chosen: **{choice['chosen']}**: {choice.get('reason') or 'it meets every constraint'}"))
        meets = [str(m) for m in choice.get("meets") or []]
        if len(meets) > 1:
            lines.append(sentence(f"Meeting every constraint ({len(meets)}): " + ", ".join(meets)))
        return lines
    reason = choice.get("reason") or ""
    # choose() starts its reason with what the heading already says
    reason = reason[len(_NONE):].lstrip("; ") if reason.lower().startswith(_NONE) else reason
    if reason.startswith("closest: "):
        reason = "closest overall: " + reason[len("closest: "):]
    lines.append(sentence("No variant meets the constraints" + (f"; {reason}" if reason else "")))
    return lines + [_failure_line(f) for f in choice.get("failures") or [] if isinstance(f, dict)]


def recipe_yaml(results: dict[str, Any]) -> str | None:
    """The recipe that produced the run, as YAML (None when the results hold none)."""
    recipe = results.get("recipe")
    if not isinstance(recipe, dict):
        return None
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
