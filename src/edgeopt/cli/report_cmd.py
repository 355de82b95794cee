"""``edgeopt report RESULTS.json [MORE.json ...]``: re-render a report, or merge several."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeopt.cli.app import app


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(
        help="One results.json to re-render, or several (e.g. from `edgeopt run --only ... --out-dir` "
             "on different machines) to merge into one report.")],
    out_dir: Annotated[Path | None, typer.Option(
        help="Where report.md/.html and the plots go. One file: default its own folder. Several: "
             "required (the merged results.json is written there too); it must not be the folder "
             "of one of the inputs.")] = None,
) -> None:
    """Write report.md, a self-contained report.html and the Pareto plots from results.json files.
    Merged rows keep every variant (a name taken twice gets the file's folder name appended, or
    its file name when the folders are the same); rows measured on another machine carry a note
    (their latency is not comparable), and the variant meeting the constraints is chosen again
    over all rows."""
    from edgeopt.report.merge import write_merged_report

    path = write_merged_report(results, out_dir)
    print(f"report: {path.with_suffix('.html')} (and {path.name})")
