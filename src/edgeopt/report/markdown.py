"""The results table as Markdown (report.md) and HTML (report.html), written atomically."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from edgeopt._io import write_text_atomic
from edgeopt.report.summary import baseline_row, choice_lines, recipe_yaml, relative

# (header, function of a variant dict -> cell text). One place defines the columns, so the
# Markdown and HTML tables and the terminal table never disagree.
_MB = 1e6  # file sizes in MB = 10**6 bytes (as bench/ and `edgeopt bench --compare`); memory in MiB


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
        def acc(arm: str) -> str:
            spread = f" ± {_fmt(d.get(arm + '_std'), '.2f', 100)}" if seeds > 1 else ""
            return f"{_fmt(d.get(arm + '_mean'), '.2f', 100)}{spread}%"

        line = (f"{v.get('name', '?')}: {d.get('student')} distilled from {d.get('teacher')} ({how}): "
                f"test top-1 {acc('student')}")
        if d.get("gain") is None:
            line += f"; verdict: {d.get('verdict', 'no baseline')}."
        else:
            threshold = f" (threshold {_fmt(d.get('threshold'), '.2f', 100)})" if seeds > 1 else ""
            line += (f" vs {acc('baseline')} trained alone: gain {_fmt(d.get('gain'), '+.2f', 100)} "
                     f"points{threshold}; verdict: {d.get('verdict')}.")
        if d.get("note"):
            line += f" ({d['note']})"
        out.append(line)
    return out


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


def variant_rows(results: dict[str, Any], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and one row of cell texts per variant (``compact``: the terminal's subset)."""
    cols = [(h, _short_parity if h == "parity" else f) for h, f in COLUMNS if h in COMPACT] if compact else COLUMNS
    headers = [h for h, _ in cols]
    base = baseline_row(results)
    chosen = (results.get("choice") or {}).get("chosen")
    rows = []
    for v in results.get("variants", []):
        cells = [str(f({**v, "_rel": relative(v, base)})) for _, f in cols]
        if chosen is not None and v.get("name") == chosen:
            cells[0] += " ✓"  # the variant chosen under the constraints
        rows.append(cells)
    return headers, rows


def _machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {}) or {}
    parts = [
        str(m.get("cpu", m.get("cpu_model", "unknown CPU"))),
        f"{m.get('logical_cores', m.get('cores', '?'))} logical cores",
        f"torch {m.get('torch', '?')}",
        f"onnxruntime {m.get('onnxruntime', '?')}",
    ]
    return ", ".join(parts)


def _settings_line(results: dict[str, Any]) -> str:
    v = (results.get("variants") or [{}])[0]
    b1 = _get(v, "latency", "batch1") or {}
    tp = _get(v, "latency", "throughput") or {}
    return (
        f"latency: batch 1, {b1.get('runs', '?')} timed runs after warm-up, "
        f"{b1.get('threads', '?')} thread(s); throughput at batch {tp.get('batch_size', '?')}; "
        f"accuracy on the {v.get('split', 'test')} split ({_get(v, 'accuracy', 'n') or '?'} images)"
    )


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figures(results: dict[str, Any], base_dir: str | Path | None) -> list[tuple[str, str, str, Path | None]]:
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


def _figures_markdown(results: dict[str, Any], base_dir: str | Path | None) -> list[str]:
    rows = _figures(results, base_dir)
    if not rows:
        return []
    lines = ["", "## Figures"]
    for title, rel, caption, f in rows:
        lines.append("")
        if f is None:
            lines.append(f"**{title}** (figure missing: {rel})")
            continue
        target = f"<{rel}>" if " " in rel else rel  # a path with spaces needs <> in Markdown
        lines.append(f"![{title.replace('[', '(').replace(']', ')')}]({target})")
        if caption:
            lines += ["", f"*{title}.* {caption}"]
    return lines


def _figures_html(results: dict[str, Any], base_dir: str | Path | None) -> str:
    import base64

    rows = _figures(results, base_dir)
    if not rows:
        return ""
    parts = ["<h2>Figures</h2>"]
    for title, rel, caption, f in rows:
        cap = f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption>"
        if f is None:
            parts.append(f"<figure><p>(figure missing: {html.escape(rel)})</p>{cap}</figure>")
            continue
        data = base64.b64encode(f.read_bytes()).decode()
        parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">{cap}</figure>')
    return "".join(parts)


def render_markdown(
    results: dict[str, Any], plots: list[str] | None = None, base_dir: str | Path | None = None
) -> str:
    """The report as Markdown text.

    Args:
        results: a results dict (``edgeopt.evaluate.results``); its optional ``figures``
            (``[{"title", "path", "caption"?}]``) become a "Figures" section.
        plots: file names of the Pareto plots, beside the report.
        base_dir: the report's folder: figure paths are relative to it (default: the
            current directory). A missing PNG is listed as "(figure missing: path)".

    Example:
        >>> md = render_markdown({"run": "demo", "variants": [],
        ...                       "figures": [{"title": "w", "path": "nope.png"}]})
        >>> "(figure missing: nope.png)" in md
        True
    """
    headers, rows = variant_rows(results)
    lines = [
        f"# edgeopt report: {results.get('run', 'run')}",
        "",
        f"Created {results.get('created', '?')} on {_machine_line(results)}.",
        "",
        _settings_line(results) + ".",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        (
            "Every figure was measured on the artifact itself, in its runtime: size is the file "
            "you would ship, in MB of 10^6 bytes (gzip'd: what it costs over a network); peak MiB "
            "(2^20 bytes) is the peak resident "
            "memory of a fresh process that loads the artifact and runs inference, split into the "
            "runtime's own share (runtime MiB: the interpreter and the runtime's libraries, before "
            "the artifact is loaded) and the model's (model MiB: what loading it and running "
            "inference add; compare variants on this one); "
            "\\* energy is an **estimate** from MACs and bytes moved with the 45 nm per-operation "
            "energies of Horowitz (ISSCC 2014), not a measurement."
        ),
    ]
    base = baseline_row(results)
    if base is not None:
        lines += ["", f"Δ top-1 (points), speed-up (batch 1) and compression (file size) are against "
                      f"**{base.get('name')}**; ✓ marks the chosen variant."]
    chosen = choice_lines(results)
    if chosen:
        lines += ["", "## Choice", ""] + chosen
    warned = variant_warnings(results)
    if warned:  # right after the table: a number with a warning must not be read without it
        lines += ["", "## Warnings", ""]
        lines += [f"- **{name}**: {w}" for name, w in warned]
    distilled = distillation_lines(results)
    if distilled:
        lines += ["", "## Distillation", ""] + [f"- {d}" for d in distilled]
    for p in plots or []:
        lines += ["", f"![{Path(p).stem}]({Path(p).name})"]
    lines += _figures_markdown(results, base_dir)
    recipe = recipe_yaml(results)
    if recipe:
        lines += ["", "## Recipe", "", "```yaml", recipe.rstrip(), "```"]
    if results.get("elapsed_s") is not None:
        lines += ["", f"Run time: {results['elapsed_s']:.1f} s."]
    return "\n".join(lines) + "\n"


def render_html(
    results: dict[str, Any], plot_pngs: list[Path], base_dir: str | Path | None = None
) -> str:
    """A self-contained HTML page (plots and ``results["figures"]`` embedded as base64 PNG).

    ``base_dir`` is the folder figure paths are relative to (default: the current directory).
    """
    import base64

    headers, rows = variant_rows(results)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(("<tr class='chosen'>" if r[0].endswith(" ✓") else "<tr>")
                   + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    chosen = choice_lines(results)
    choice_html = ""
    if chosen:
        import re

        def _bold(t: str) -> str:
            return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(t))

        items = [c for c in chosen if c.startswith("- ")]
        text = [c for c in chosen if not c.startswith("- ")]
        choice_html = ("<h2>Choice</h2>" + "".join(f"<p class='choice'>{_bold(t)}</p>" for t in text)
                       + ("<ul>" + "".join(f"<li>{_bold(i[2:])}</li>" for i in items) + "</ul>" if items else ""))
    recipe = recipe_yaml(results)
    recipe_html = (f"<details><summary>Recipe</summary><pre>{html.escape(recipe)}</pre></details>"
                   if recipe else "")
    imgs = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in plot_pngs
    )
    warned = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(w)}</li>" for name, w in variant_warnings(results))
    if warned:
        warned = f"<h2>Warnings</h2><ul class='warnings'>{warned}</ul>"
    distilled = "".join(f"<li>{html.escape(d)}</li>" for d in distillation_lines(results))
    if distilled:
        warned += f"<h2>Distillation</h2><ul>{distilled}</ul>"
    style = (
        ".warnings li{color:#8a4b00}tr.chosen td{background:#e6f4ea;font-weight:600}"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,td:nth-child(2){text-align:left}img{max-width:48%;margin:1em 1% 0 0}"
        "figure{margin:1em 0}figure img{max-width:100%;margin:0}figcaption{color:#444}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>edgeopt report: "
        f"{html.escape(str(results.get('run', '')))}</title><style>{style}</style></head><body>"
        f"<h1>edgeopt report: {html.escape(str(results.get('run', '')))}</h1>"
        f"<p>Created {html.escape(str(results.get('created', '?')))} on {html.escape(_machine_line(results))}.</p>"
        f"<p>{html.escape(_settings_line(results))}.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "<p>* energy is an estimate (Horowitz, ISSCC 2014, 45 nm), not a measurement.</p>"
        f"{choice_html}{warned}"
        f"{imgs}{_figures_html(results, base_dir)}{recipe_html}</body></html>\n"
    )


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and the Pareto plots into ``out_dir``.

    Figures listed in ``results["figures"]`` have paths relative to ``out_dir``: report.md
    links them, report.html embeds them.

    Returns:
        The path of ``report.md``.
    """
    from edgeopt.report.plots import pareto_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = pareto_plots(results, out)
    write_text_atomic(out / "report.html", render_html(results, pngs, base_dir=out))
    return write_text_atomic(out / "report.md", render_markdown(results, [p.name for p in pngs], base_dir=out))
