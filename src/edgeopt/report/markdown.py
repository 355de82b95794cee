"""The report: report.md (Markdown), report.html (:mod:`edgeopt.report.html`) and the Pareto
plots (:mod:`edgeopt.report.plots`), written atomically by :func:`write_report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt._io import write_text_atomic
from edgeopt.report.html import render_html
from edgeopt.report.summary import baseline_row, choice_lines, recipe_yaml
from edgeopt.report.table import (
    COLUMNS,
    COMPACT,
    distillation_lines,
    figures,
    machine_line,
    machines_differ_line,
    settings_line,
    variant_notes,
    variant_rows,
    variant_warnings,
)

# The table's pieces live in edgeopt.report.table and the page in edgeopt.report.html; they
# are importable from here as they were before the split.
__all__ = ["COLUMNS", "COMPACT", "distillation_lines", "render_html", "render_markdown", "variant_rows",
           "variant_warnings", "write_report"]


def _figures_markdown(results: dict[str, Any], base_dir: str | Path | None) -> list[str]:
    rows = figures(results, base_dir)
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
        f"Created {results.get('created', '?')} on {machine_line(results)}.",
        "",
    ]
    differ = machines_differ_line(results)
    if differ:  # a merge of runs: say it before anyone compares latencies across rows
        lines += [f"**{differ}**", ""]
    lines += [
        settings_line(results) + ".",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
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
        lines += ["", (f"Δ top-1 (points), speed-up (batch 1) and compression (file size) are against "
                       f"**{base.get('name')}**; ✓ marks the chosen variant.")]
    chosen = choice_lines(results)
    if chosen:  # sentences as paragraphs, the failing constraints as one list
        lines += ["", "## Choice"]
        lines += [x for ln in chosen if not ln.startswith("- ") for x in ("", ln)]
        failing = [ln for ln in chosen if ln.startswith("- ")]
        if failing:
            lines += ["", *failing]
    warned = variant_warnings(results)
    if warned:  # right after the table: a number with a warning must not be read without it
        lines += ["", "## Warnings", ""]
        lines += [f"- **{name}**: {w}" for name, w in warned]
    distilled = distillation_lines(results)
    if distilled:
        lines += ["", "## Distillation", ""] + [f"- {d}" for d in distilled]
    notes = variant_notes(results)
    if notes:  # why a cell is "–", which machine a merged row came from
        lines += ["", "## Notes", ""] + [f"- **{name}**: {n}" for name, n in notes]
    for p in plots or []:
        lines += ["", f"![{Path(p).stem}]({Path(p).name})"]
    lines += _figures_markdown(results, base_dir)
    recipe = recipe_yaml(results)
    if recipe:
        lines += ["", "## Recipe", "", "```yaml", recipe.rstrip(), "```"]
    if results.get("elapsed_s") is not None:
        lines += ["", f"Run time: {results['elapsed_s']:.1f} s."]
    return "\n".join(lines) + "\n"


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
