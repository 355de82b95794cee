"""Device constraints and the choice of the variant that meets them.

:class:`Constraints` holds the bounds a device sets (latency, size, memory, accuracy, drop
from the baseline); :func:`choose` picks, among the measured rows of a results dict, the
variant with the highest top-1 that meets every bound, or says which bound failed by how
much and which variant came closest. :func:`apply_choice` stores both in the results, and
:func:`describe_choice` says it in one line for the terminal.

What each bound reads from a results row (see :mod:`edgeopt.evaluate.results`):

============== ================================= ==========================================
constraint     row field                          unit of ``limit``, ``value`` and ``by``
============== ================================= ==========================================
max_latency_ms latency.batch1.median_ms           ms (batch 1 median)
max_size_mb    size.bytes / 1e6                   MB (10^6 bytes, the file you ship)
max_memory_mb  memory.delta_mb                    MiB (the model's share of peak memory)
min_accuracy   accuracy.top1                      fraction 0..1 (0.9 = 90 %)
max_drop       100 x (baseline top1 - top1)       percentage points
============== ================================= ==========================================

A row without the measurement a bound needs does not meet it. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from edgeopt.config import Config
from edgeopt.errors import ConfigError

#: constraint -> (sense, unit): ``max`` bounds pass when value <= limit, ``min`` when >=.
_KINDS: dict[str, tuple[str, str]] = {
    "max_latency_ms": ("max", "ms"),
    "max_size_mb": ("max", "MB"),
    "max_memory_mb": ("max", "MiB"),
    "min_accuracy": ("min", "fraction"),
    "max_drop": ("max", "points"),
}
#: what a constraint needs measured, for messages about missing measurements
_NEEDS = {"max_latency_ms": "latency", "max_size_mb": "size", "max_memory_mb": "memory",
          "min_accuracy": "accuracy", "max_drop": "accuracy (of the variant and the baseline)"}


@dataclasses.dataclass(frozen=True)
class Constraints(Config):
    """The bounds a deployment sets; None leaves a bound unset.

    Attributes:
        max_latency_ms: batch-1 median latency in ms (``latency.batch1.median_ms``).
        max_size_mb: size on disk in MB of 10^6 bytes (``size.bytes / 1e6``).
        max_memory_mb: the model's share of peak memory in MiB (``memory.delta_mb``): the
            runtime's own baseline depends on how it is installed on the device.
        min_accuracy: top-1 as a fraction in [0, 1] (``accuracy.top1``; 0.9 is 90 %).
        max_drop: top-1 drop from the baseline row in percentage points.

    Example:
        >>> c = Constraints(max_latency_ms=2.0, min_accuracy=0.95)
        >>> c.active()
        {'max_latency_ms': 2.0, 'min_accuracy': 0.95}
        >>> Constraints(min_accuracy=90)
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: Constraints.min_accuracy=90.0 must be a fraction, e.g. 0.9 for 90 %
    """

    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    min_accuracy: float | None = None
    max_drop: float | None = None

    def validate(self) -> None:
        for name in _KINDS:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"Constraints.{name}={value!r} must be a finite number")
        for name in ("max_latency_ms", "max_size_mb", "max_memory_mb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"Constraints.{name}={value!r} must be > 0")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ConfigError(f"Constraints.min_accuracy={self.min_accuracy!r} must be a fraction, "
                              f"e.g. 0.9 for 90 %")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(f"Constraints.max_drop={self.max_drop!r} must be in [0, 100] "
                              f"percentage points of top-1")

    def active(self) -> dict[str, float]:
        """The bounds that are set, in a fixed order: ``{name: limit}``."""
        return {k: getattr(self, k) for k in _KINDS if getattr(self, k) is not None}


# -- reading a row ----------------------------------------------------------------------------
def _get(row: dict[str, Any], *keys: str) -> Any:
    obj: Any = row
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj if isinstance(obj, (int, float)) and not isinstance(obj, bool) else None


def _top1(row: dict[str, Any]) -> float | None:
    return _get(row, "accuracy", "top1")


def _latency(row: dict[str, Any]) -> float | None:
    return _get(row, "latency", "batch1", "median_ms")


def _size_mb(row: dict[str, Any]) -> float | None:
    b = _get(row, "size", "bytes")
    return None if b is None else b / 1e6


def _readers(baseline: dict[str, Any] | None) -> dict[str, Callable[[dict[str, Any]], float | None]]:
    base_top1 = _top1(baseline) if baseline is not None else None

    def drop(row: dict[str, Any]) -> float | None:
        t = _top1(row)
        return None if t is None or base_top1 is None else 100.0 * (base_top1 - t)

    return {"max_latency_ms": _latency, "max_size_mb": _size_mb,
            "max_memory_mb": lambda r: _get(r, "memory", "delta_mb"), "min_accuracy": _top1, "max_drop": drop}


def _r(x: float) -> float:
    """Six significant digits: 0.7, not 0.7000000000000002."""
    return float(f"{x:.6g}")


def _violation(name: str, limit: float, value: float | None) -> float | None:
    """How far ``value`` is from meeting ``limit`` (0 when it meets; None: not measured)."""
    if value is None:
        return None
    sense = _KINDS[name][0]
    return max(0.0, value - limit) if sense == "max" else max(0.0, limit - value)


def _baseline(results: dict[str, Any], variants: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row ``results["baseline"]`` names, else the first; a named row that is not there
    is no baseline (``max_drop`` is then not measured), never another row in its place."""
    name = results.get("baseline")
    if name:
        return next((v for v in variants if v.get("name") == name), None)
    return variants[0] if variants else None


def _check(results: dict[str, Any], constraints: Constraints):
    """``(variants, {name: {constraint: (value, violation)}})`` of every row."""
    variants = [v for v in results.get("variants") or [] if isinstance(v, dict)]
    read = _readers(_baseline(results, variants))
    table = {}
    for v in variants:
        checks = {}
        for c, limit in constraints.active().items():
            value = read[c](v)
            checks[c] = (value, _violation(c, limit, value))
        table[v.get("name")] = checks
    return variants, table


def _closeness(checks: dict[str, tuple[float | None, float | None]], limits: dict[str, float]):
    """Sort key of a variant that misses: fewer failing bounds, then smaller relative violation."""
    rel = []
    for c, (_, viol) in checks.items():
        if viol is None:
            rel.append(math.inf)  # not measured: as far as can be
        elif viol > 0:
            rel.append(viol / abs(limits[c]) if limits[c] else viol)
    return (len(rel), max(rel, default=0.0), sum(rel))


def rank_closest(results: dict[str, Any], constraints: Constraints) -> list[str]:
    """Variant names ordered by how close each comes to meeting every bound.

    Fewest failing bounds first (a missing measurement fails), then the smallest largest
    relative violation (violation / limit), then the smallest sum of them.

    Example:
        >>> r = {"variants": [{"name": "a", "latency": {"batch1": {"median_ms": 3.0}}},
        ...                   {"name": "b", "latency": {"batch1": {"median_ms": 2.5}}}]}
        >>> rank_closest(r, Constraints(max_latency_ms=2.0))
        ['b', 'a']
    """
    _, table = _check(results, constraints)
    limits = constraints.active()
    return sorted(table, key=lambda n: _closeness(table[n], limits))


def choose(results: dict[str, Any], constraints: Constraints) -> dict[str, Any]:
    """Pick the variant that meets every constraint with the highest top-1.

    Ties are broken by lower batch-1 latency, then by smaller size. The baseline row (for
    ``max_drop``) is ``results["baseline"]`` (a variant name), else the first variant.

    Args:
        results: a results dict (its ``variants`` rows are read, nothing is changed).
        constraints: the bounds.

    Returns:
        ``{"chosen": name | None, "reason": one line, "meets": [names meeting every bound],
        "failures": [...]}``. When none meets, ``failures`` has one entry per bound that some
        variant misses: ``{"constraint", "limit", "closest" (the variant missing it by the
        least, None when none has the measurement), "value" (its value), "by" (how much it
        misses), "unit"}``, in the units of the module's table; the reason names the variant
        closest overall. ``failures`` is ``[]`` when a variant is chosen.

    Example:
        >>> r = {"variants": [
        ...     {"name": "fp32", "accuracy": {"top1": 0.98}, "latency": {"batch1": {"median_ms": 2.7}}},
        ...     {"name": "int8", "accuracy": {"top1": 0.97}, "latency": {"batch1": {"median_ms": 1.2}}}]}
        >>> choose(r, Constraints(max_latency_ms=2.0))["chosen"]
        'int8'
        >>> f = choose(r, Constraints(max_latency_ms=1.0))["failures"][0]
        >>> f["closest"], f["value"], f["by"], f["unit"]
        ('int8', 1.2, 0.2, 'ms')
    """
    variants, table = _check(results, constraints)
    limits = constraints.active()
    if not variants:
        return {"chosen": None, "reason": "no variants to choose from", "meets": [], "failures": []}
    meets = [v.get("name") for v in variants
             if all(viol == 0.0 for _, viol in table[v.get("name")].values())]
    if meets:
        by_name = {v.get("name"): v for v in variants}

        def key(n: str) -> tuple[float, float, float]:
            v = by_name[n]
            t, lat, size = _top1(v), _latency(v), _size_mb(v)
            return (-(t if t is not None else -math.inf), lat if lat is not None else math.inf,
                    size if size is not None else math.inf)

        best = min(meets, key=key)  # min keeps the first of equals: the results' order
        t = _top1(by_name[best])
        what = " and ".join(limits) if limits else "no constraints (none set)"
        acc = f"{100 * t:.2f} %" if t is not None else "not measured"
        return {"chosen": best,
                "reason": (f"{best} has the highest top-1 ({acc}) of the {len(meets)} variant(s) "
                           f"meeting {what}" if limits else f"{best} has the highest top-1 ({acc}); no constraints set"),
                "meets": meets, "failures": []}

    failures = []
    for c, limit in limits.items():
        measured = [(n, checks[c]) for n, checks in table.items() if checks[c][1] is not None]
        unit = _KINDS[c][1]
        if not measured:  # no variant has what this bound needs: it fails, with no closest
            failures.append({"constraint": c, "limit": limit, "closest": None, "value": None, "by": None,
                             "unit": unit})
            continue
        violators = [item for item in measured if item[1][1] > 0]
        if not violators:
            continue  # every variant measured meets it (the reason names those not measured)
        name, (value, viol) = min(violators, key=lambda item: item[1][1])  # first of equals
        failures.append({"constraint": c, "limit": limit, "closest": name, "value": _r(value), "by": _r(viol),
                         "unit": unit})
    closest = min(table, key=lambda n: _closeness(table[n], limits))
    missed = [_miss_text(c, limits[c], *table[closest][c]) for c in limits if table[closest][c][1] != 0.0]
    reason = f"no variant meets every constraint; closest: {closest} ({'; '.join(missed)})"
    lacking = sorted({c for checks in table.values() for c, (_, viol) in checks.items() if viol is None})
    if lacking:
        reason += "; a variant missing a measurement does not meet its bound (" + ", ".join(
            f"{c} needs {_NEEDS[c]}" for c in lacking) + ")"
    return {"chosen": None, "reason": reason, "meets": [], "failures": failures}


def apply_choice(results: dict[str, Any], constraints: Constraints) -> dict[str, Any]:
    """Store ``results["constraints"]`` and ``results["choice"]`` (:func:`choose`); returns ``results``.

    Example:
        >>> r = apply_choice({"variants": [{"name": "a", "size": {"bytes": 2_000_000}}]},
        ...                  Constraints(max_size_mb=3))
        >>> r["choice"]["chosen"], r["constraints"]["max_size_mb"]
        ('a', 3.0)
    """
    results["constraints"] = constraints.to_dict()
    results["choice"] = choose(results, constraints)
    return results


# -- one line for the terminal ------------------------------------------------------------------
def _num(x: float) -> str:
    """3 significant digits, with a decimal point: 2.0, 1.23, 0.0512."""
    s = f"{x:.3g}"
    return s if any(ch in s for ch in ".en") else s + ".0"


def _amount(c: str, x: float) -> str:
    """A value or a violation of constraint ``c`` with its unit, as a person reads it."""
    if c == "min_accuracy":
        return f"{_num(100 * x)} points"
    return f"{_num(x)} {_KINDS[c][1]}"


def _miss_text(c: str, limit: float, value: float | None, viol: float | None) -> str:
    if viol is None:
        return f"{c} not measured"
    return f"{c} fails by {_amount(c, viol)}"


def _meet_text(c: str, limit: float, value: float | None) -> str:
    if value is None:  # only when the constraint is unset upstream; kept for safety
        return f"{c} (not measured)"
    if c == "min_accuracy":
        return f"{c} ({100 * value:.1f} % >= {100 * limit:.1f} %)"
    unit = {"max_drop": " points"}.get(c, " " + _KINDS[c][1])
    return f"{c} ({_num(value)}{unit} <= {_num(limit)})"


def describe_choice(results: dict[str, Any]) -> str:
    """The choice stored by :func:`apply_choice`, in one line.

    Example:
        >>> r = apply_choice({"variants": [{"name": "int8", "accuracy": {"top1": 0.971},
        ...     "latency": {"batch1": {"median_ms": 1.2}}}]}, Constraints(max_latency_ms=2.0, min_accuracy=0.95))
        >>> describe_choice(r)
        'chosen: int8 — meets max_latency_ms (1.2 ms <= 2.0) and min_accuracy (97.1 % >= 95.0 %)'
        >>> r = apply_choice(r, Constraints(max_latency_ms=0.5))
        >>> describe_choice(r)
        'no variant meets the constraints: max_latency_ms fails by 0.7 ms (closest: int8)'
    """
    choice = results.get("choice") or {}
    constraints = Constraints.from_dict(results.get("constraints") or {})
    limits = constraints.active()
    if choice.get("chosen") is not None:
        name = choice["chosen"]
        _, table = _check(results, constraints)
        parts = [_meet_text(c, limits[c], table.get(name, {}).get(c, (None, None))[0]) for c in limits]
        if not parts:
            return f"chosen: {name} — no constraints set"
        meets = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"chosen: {name} — meets {meets}"
    fails = []
    for f in choice.get("failures") or []:
        if f.get("closest") is None:
            fails.append(f"{f['constraint']}: no variant has the measurement ({_NEEDS.get(f['constraint'], '?')})")
        else:
            fails.append(f"{f['constraint']} fails by {_amount(f['constraint'], f['by'])} (closest: {f['closest']})")
    if not fails:
        return f"no variant meets the constraints: {choice.get('reason', 'nothing was measured')}"
    return "no variant meets the constraints: " + "; ".join(fails)
