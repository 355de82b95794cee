"""report.html: one self-contained page (every PNG embedded as base64, no script, no link
to another file), so it can be mailed or attached to an issue as it is."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from edgeopt.report.summary import baseline_row, choice_lines, recipe_yaml
from edgeopt.report.table import (
    chosen_name,
    distillation_lines,
    figures,
    machine_line,
    machines_differ_line,
    settings_line,
    variant_notes,
    variant_rows,
    variant_warnings,
)

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em}"
    # one line per row: a wide table scrolls sideways in its box instead of wrapping cells
    ".table{overflow-x:auto}table{border-collapse:collapse;font-size:.85em}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
    "td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}"
    "tr.chosen td{background:#e6f4ea;font-weight:600}tr.baseline td{background:#f3f3f3}"
    ".warnings li,p.machines{color:#8a4b00}"
    "img{max-width:48%;margin:1em 1% 0 0}"
    "figure{margin:1em 0}figure img{max-width:100%;margin:0}figcaption{color:#444}"
    "details pre{background:#f6f6f6;padding:.5em 1em}"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bold(text: str) -> str:
    """Escape ``text`` and turn its Markdown ``**bold**`` into <b>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def _table(results: dict[str, Any]) -> str:
    headers, rows = variant_rows(results)
    chosen, base = chosen_name(results), baseline_row(results)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for v, cells in zip(results.get("variants") or [], rows):
        cls = ("chosen" if chosen is not None and v.get("name") == chosen
               else "baseline" if v is base else "")
        body.append((f"<tr class='{cls}'>" if cls else "<tr>")
                    + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _choice(results: dict[str, Any]) -> str:
    lines = choice_lines(results)
    if not lines:
        return ""
    items = [ln[2:] for ln in lines if ln.startswith("- ")]
    text = [ln for ln in lines if not ln.startswith("- ")]
    out = "<h2>Choice</h2>" + "".join(f"<p class='choice'>{_bold(t)}</p>" for t in text)
    if items:
        out += "<ul>" + "".join(f"<li>{_bold(i)}</li>" for i in items) + "</ul>"
    return out


def _items(title: str, pairs: list[tuple[str, str]], cls: str = "") -> str:
    if not pairs:
        return ""
    attr = f" class='{cls}'" if cls else ""
    lis = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in pairs)
    return f"<h2>{title}</h2><ul{attr}>{lis}</ul>"


def _figures_html(results: dict[str, Any], base_dir: str | Path | None) -> str:
    rows = figures(results, base_dir)
    if not rows:
        return ""
    parts = ["<h2>Figures</h2>"]
    for title, rel, caption, f in rows:
        cap = f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption>"
        if f is None:
            parts.append(f"<figure><p>(figure missing: {html.escape(rel)})</p>{cap}</figure>")
            continue
        parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{_b64(f.read_bytes())}">'
                     f"{cap}</figure>")
    return "".join(parts)


def render_html(
    results: dict[str, Any], plot_pngs: list[Path], base_dir: str | Path | None = None
) -> str:
    """A self-contained HTML page (plots and ``results["figures"]`` embedded as base64 PNG).

    The chosen variant's row has the class ``chosen`` (and a ✓), the baseline's ``baseline``;
    the choice, warnings, notes and distillation verdicts follow the table; the recipe sits
    in a collapsed ``<details>`` block at the end.

    Args:
        results: a results dict (``edgeopt.evaluate.results``).
        plot_pngs: the Pareto plots to embed.
        base_dir: the folder figure paths are relative to (default: the current directory).

    Example:
        >>> page = render_html({"run": "demo", "variants": [{"name": "a"}], "choice": {"chosen": "a"}}, [])
        >>> "<tr class='chosen'><td>a ✓</td>" in page
        True
    """
    run = html.escape(str(results.get("run", "")))
    base = baseline_row(results)
    parts = [
        (f"<!doctype html><html><head><meta charset='utf-8'><title>edgeopt report: {run}</title>"
        f"<style>{_STYLE}</style></head><body><h1>edgeopt report: {run}</h1>"),
        f"<p>Created {html.escape(str(results.get('created', '?')))} on {html.escape(machine_line(results))}.</p>",
    ]
    differ = machines_differ_line(results)
    if differ:
        parts.append(f"<p class='machines'><b>{html.escape(differ)}</b></p>")
    parts += [f"<p>{html.escape(settings_line(results))}.</p>", _table(results),
              "<p>* energy is an estimate (Horowitz, ISSCC 2014, 45 nm), not a measurement.</p>"]
    if base is not None:
        parts.append(f"<p>Δ top-1 (points), speed-up (batch 1) and compression (file size) are against "
                     f"<b>{html.escape(str(base.get('name')))}</b>; ✓ marks the chosen variant.</p>")
    parts += [_choice(results), _items("Warnings", variant_warnings(results), "warnings")]
    distilled = "".join(f"<li>{html.escape(d)}</li>" for d in distillation_lines(results))
    if distilled:
        parts.append(f"<h2>Distillation</h2><ul>{distilled}</ul>")
    parts.append(_items("Notes", variant_notes(results), "notes"))
    parts += [f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{_b64(p.read_bytes())}">'
              for p in plot_pngs]
    parts.append(_figures_html(results, base_dir))
    recipe = recipe_yaml(results)
    if recipe:
        parts.append(f"<details><summary>Recipe</summary><pre>{html.escape(recipe)}</pre></details>")
    if results.get("elapsed_s") is not None:
        parts.append(f"<p>Run time: {float(results['elapsed_s']):.1f} s.</p>")
    return "".join(parts) + "</body></html>\n"
