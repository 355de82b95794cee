"""What report.md, report.html and the terminal table share: the columns, one row of cell
texts per variant, and the lines under the table (machine, settings, warnings, notes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.report.summary import baseline_row, relative

_MB = 1e6  # file sizes in MB = 10**6 bytes (as bench/ and `edgeopt bench --compare`); memory in MiB
CHOSEN_MARK = " ✓"  # appended to the chosen variant's name in the table


def _get(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)  # type: ignore[assignment]
    return d


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    if value is None:
        return "–"
    try:
        return format(float(value) * scale, spec)
    except (TypeError, ValueError):
        return str(value)


def _parity(v: dict[str, Any]) -> str:
    p = v.get("parity")
    if not p:
        return "–"
    mark = "ok" if p.get("passed") else "FAIL"
    rel = f", rel {p['max_rel_diff']:.1e}" if isinstance(p.get("max_rel_diff"), (int, float)) else ""
    return f"{mark} (max {p.get('max_abs_diff', 0):.1e}{rel}, top-1 {100 * p.get('top1_agreement', 0):.1f}%)"


# (header, function of a variant dict -> cell text). One place defines the columns, so the
# Markdown and HTML tables and the terminal table never disagree. ``v["_rel"]`` holds the
# cells against the baseline row (summary.relative).
COLUMNS: list[tuple[str, Any]] = [
    ("variant", lambda v: v.get("name", "?")),
    ("runtime", lambda v: v.get("runtime", "?")),
    ("top-1 %", lambda v: _fmt(_get(v, "accuracy", "top1"), ".2f", 100)),
    ("Δ top-1", lambda v: v["_rel"]["delta"]),  # points against the baseline row
    ("p50 ms (b=1)", lambda v: _fmt(_get(v, "latency", "batch1", "median_ms"), ".3f")),
    ("p99 ms (b=1)", lambda v: _fmt(_get(v, "latency", "batch1", "p99_ms"), ".3f")),
    ("speed-up", lambda v: v["_rel"]["speedup"]),  # baseline's batch-1 median / this one's
    ("img/s (batch)", lambda v: _fmt(_get(v, "latency", "throughput", "throughput"), ".0f")),
    ("size MB", lambda v: _fmt(_get(v, "size", "bytes"), ".3f", 1 / _MB)),
    ("gzip MB", lambda v: _fmt(_get(v, "size", "gzip_bytes"), ".3f", 1 / _MB)),
    ("compression", lambda v: v["_rel"]["compression"]),  # baseline's file size / this one's
    ("params", lambda v: _fmt(_get(v, "size", "params"), ",.0f")),
    ("MMACs", lambda v: _fmt(_get(v, "macs", "total_macs"), ".2f", 1e-6)),
    # the process's peak splits into the runtime's own share (interpreter + libraries, loaded
    # before the artifact) and the model's (load + inference): a 1 MB model is not 700 MiB
    ("peak MiB", lambda v: _fmt(_get(v, "memory", "peak_rss_mb"), ".1f")),  # VmHWM: KiB -> MiB
    ("runtime MiB", lambda v: _fmt(_get(v, "memory", "baseline_mb"), ".1f")),
    ("model MiB", lambda v: _fmt(_get(v, "memory", "delta_mb"), ".1f")),
    ("energy µJ*", lambda v: _fmt(_get(v, "energy", "total_uJ"), ".2f")),
    ("parity", _parity),
]

# The columns that fit an 80-column terminal; the files carry them all.
COMPACT = ("variant", "top-1 %", "Δ top-1", "p50 ms (b=1)", "speed-up", "size MB", "model MiB", "parity")


def _short_parity(v: dict[str, Any]) -> str:
    p = v.get("parity")
    return "–" if not p else ("ok" if p.get("passed") else "FAIL")


def chosen_name(results: dict[str, Any]) -> str | None:
    """The name of the variant chosen under the constraints (None: none chosen or no choice)."""
    choice = results.get("choice")
    return choice.get("chosen") if isinstance(choice, dict) else None


def variant_rows(results: dict[str, Any], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and one row of cell texts per variant (``compact``: the terminal's subset).

    Δ top-1, speed-up and compression compare each row with the baseline row
    (``results["baseline"]``, else the first variant); the chosen variant's name ends in ✓.

    Example:
        >>> r = {"baseline": "fp32", "choice": {"chosen": "int8"}, "variants": [
        ...     {"name": "fp32", "accuracy": {"top1": 0.9}, "latency": {"batch1": {"median_ms": 10}}},
        ...     {"name": "int8", "accuracy": {"top1": 0.885}, "latency": {"batch1": {"median_ms": 4}}}]}
        >>> headers, rows = variant_rows(r, compact=True)
        >>> [dict(zip(headers, row))["speed-up"] for row in rows], rows[1][0]
        (['1.00x', '2.50x'], 'int8 ✓')
    """
    cols = [(h, _short_parity if h == "parity" else f) for h, f in COLUMNS if h in COMPACT] if compact else COLUMNS
    headers = [h for h, _ in cols]
    base = baseline_row(results)
    chosen = chosen_name(results)
    rows = []
    for v in results.get("variants") or []:
        cells = [str(f({**v, "_rel": relative(v, base)})) for _, f in cols]
        if chosen is not None and v.get("name") == chosen:
            cells[0] += CHOSEN_MARK
        rows.append(cells)
    return headers, rows


def machine_line(results: dict[str, Any]) -> str:
    """The machine the run was measured on: CPU, cores, torch and onnxruntime versions."""
    m = results.get("machine", {}) or {}
    parts = [
        str(m.get("cpu", m.get("cpu_model", "unknown CPU"))),
        f"{m.get('logical_cores', m.get('cores', '?'))} logical cores",
        f"torch {m.get('torch', '?')}",
        f"onnxruntime {m.get('onnxruntime', '?')}",
    ]
    return ", ".join(parts)


def machines_differ_line(results: dict[str, Any]) -> str | None:
    """For a merge of runs from different machines (``merge_results``): which, and that their
    latencies are not comparable; None for one machine."""
    if not results.get("machines_differ"):
        return None
    machines = results.get("machines") or {}
    which = "; ".join(f"{label}: {machine_line({'machine': m})}" for label, m in machines.items())
    return ("The rows were measured on different machines" + (f" ({which})" if which else "")
            + ": latency, throughput and memory are comparable only between rows of the same machine.")


def settings_line(results: dict[str, Any]) -> str:
    """How latency, throughput and accuracy were measured (read from the first row)."""
    v = (results.get("variants") or [{}])[0]
    b1 = _get(v, "latency", "batch1") or {}
    tp = _get(v, "latency", "throughput") or {}
    return (
        f"latency: batch 1, {b1.get('runs', '?')} timed runs after warm-up, "
        f"{b1.get('threads', '?')} thread(s); throughput at batch {tp.get('batch_size', '?')}; "
        f"accuracy on the {v.get('split', 'test')} split ({_get(v, 'accuracy', 'n') or '?'} images)"
    )


def variant_warnings(results: dict[str, Any]) -> list[tuple[str, str]]:
    """``(variant name, warning)`` for every warning a variant carries: its quantization
    warnings (low agreement with the fake-quant reference, accuracy lost on the held-out
    check, layers left float, a runtime clipping ranges) and a failed parity check.

    Example:
        >>> variant_warnings({"variants": [{"name": "int8", "quantization": {"warnings": ["low"]}}]})
        [('int8', 'low')]
    """
    out = []
    for v in results.get("variants") or []:
        if not isinstance(v, dict):
            continue
        name = str(v.get("name", "?"))
        q = v.get("quantization") if isinstance(v.get("quantization"), dict) else {}
        for w in list(q.get("warnings") or []) + list(v.get("warnings") or []):
            out.append((name, str(w)))
        p = v.get("parity")
        if isinstance(p, dict) and p.get("passed") is False:
            out.append((name, "parity FAILED: " + "; ".join(map(str, p.get("failures") or ["see the parity report"]))))
    return out


def variant_notes(results: dict[str, Any]) -> list[tuple[str, str]]:
    """``(variant name, note)`` for every note: why a measurement is missing ("–" in the
    table), how one was taken, which machine a merged row came from; the run's own notes
    come first under the name "run".

    Example:
        >>> variant_notes({"notes": ["x"], "variants": [{"name": "a", "notes": ["no latency"]}]})
        [('run', 'x'), ('a', 'no latency')]
    """
    out = [("run", str(n)) for n in results.get("notes") or []]
    for v in results.get("variants") or []:
        if isinstance(v, dict):
            out += [(str(v.get("name", "?")), str(n)) for n in v.get("notes") or []]
    return out


def _acc(d: dict[str, Any], arm: str, seeds: int) -> str:
    spread = f" ± {_fmt(d.get(arm + '_std'), '.2f', 100)}" if seeds > 1 else ""
    return f"{_fmt(d.get(arm + '_mean'), '.2f', 100)}{spread}%"


def distillation_lines(results: dict[str, Any]) -> list[str]:
    """One sentence per distilled student: its test accuracy (mean ± spread over seeds)
    against the same student trained alone, the gain in points and the verdict (a gain
    inside twice the seeds' combined spread, the threshold, is "no measurable gain").

    Example:
        >>> v = {"name": "s distilled onnx", "distillation": {"role": "student", "student": "s",
        ...      "teacher": "t", "method": "response", "temperature": 4.0, "alpha": 0.9, "epochs": 8,
        ...      "seeds": 3, "student_mean": 0.98, "student_std": 0.004, "baseline_mean": 0.97,
        ...      "baseline_std": 0.003, "gain": 0.01, "threshold": 0.01, "verdict": "no measurable gain"}}
        >>> print(distillation_lines({"variants": [v]})[0])
        s distilled onnx: s distilled from t (response KD, T=4, alpha=0.9, 8 epochs, 3 seeds): test top-1 98.00 ± 0.40% vs 97.00 ± 0.30% trained alone: gain +1.00 points (threshold 1.00); verdict: no measurable gain.
    """
    out = []
    for v in results.get("variants") or []:
        d = v.get("distillation") if isinstance(v, dict) else None
        if not isinstance(d, dict) or d.get("role") != "student":
            continue
        seeds = d.get("seeds") or 1
        how = (f"{d.get('method')} KD, T={_fmt(d.get('temperature'), 'g')}, alpha={_fmt(d.get('alpha'), 'g')}, "
               f"{d.get('epochs')} epochs, {seeds} seed{'s' if seeds != 1 else ''}")
        line = (f"{v.get('name', '?')}: {d.get('student')} distilled from {d.get('teacher')} ({how}): "
                f"test top-1 {_acc(d, 'student', seeds)}")
        if d.get("gain") is None:
            line += f"; verdict: {d.get('verdict', 'no baseline')}."
        else:
            threshold = f" (threshold {_fmt(d.get('threshold'), '.2f', 100)})" if seeds > 1 else ""
            line += (f" vs {_acc(d, 'baseline', seeds)} trained alone: gain {_fmt(d.get('gain'), '+.2f', 100)} "
                     f"points{threshold}; verdict: {d.get('verdict')}.")
        if d.get("note"):
            line += f" ({d['note']})"
        out.append(line)
    return out


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def figures(results: dict[str, Any], base_dir: str | Path | None) -> list[tuple[str, str, str, Path | None]]:
    """``results["figures"]`` as (title, path, caption, file) rows; ``file`` is None when the
    PNG is missing (or not a PNG), so the report says so instead of breaking."""
    rows = []
    for fig in results.get("figures") or []:
        if not isinstance(fig, dict) or not fig.get("path"):
            continue
        rel = str(fig["path"])
        f = Path(base_dir or ".") / rel
        try:
            with open(f, "rb") as fh:
                ok = fh.read(8) == _PNG_MAGIC
        except OSError:  # missing, a folder, unreadable
            ok = False
        rows.append((str(fig.get("title") or Path(rel).stem), rel, str(fig.get("caption") or ""), f if ok else None))
    return rows
