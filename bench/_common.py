"""Shared by the benchmarks: results JSON (with the machine) and the docs/benchmarks.md table.

Each benchmark writes ``bench/results/<name>.json``; ``write_markdown()`` rebuilds
``docs/benchmarks.md`` from every JSON there, so the page always shows the latest run of
each benchmark together with the machine it ran on and the command that produced it.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def save(name: str, title: str, headers: list[str], rows: list[list], notes: str = "", extra: dict | None = None) -> Path:
    from edgeopt._io import write_json_atomic
    from edgeopt.evaluate import machine_info

    payload = {
        "name": name,
        "title": title,
        "command": "python " + " ".join(shlex.quote(a) for a in [f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "headers": headers,
        "rows": rows,
        "notes": notes,
        "extra": extra or {},
    }
    path = write_json_atomic(RESULTS / f"{name}.json", payload)
    write_markdown()
    return path


def _machine(m: dict) -> str:
    keys = ("cpu", "physical_cores", "logical_cores", "ram_gb", "torch", "onnxruntime")
    have = {k: m.get(k) for k in keys}
    return (f"{have['cpu']}, {have['physical_cores']} physical / {have['logical_cores']} logical cores, "
            f"{have['ram_gb']} GB RAM, torch {have['torch']}, onnxruntime {have['onnxruntime']}")


def write_markdown() -> Path:
    from edgeopt._io import write_text_atomic

    parts = [
        "# Benchmarks",
        "",
        "Written by the scripts in `bench/` (`make bench` runs them all); each table says the",
        "machine it ran on and the command that wrote it. Timings are medians of many runs",
        "after warm-up, with the thread count set explicitly; two things are compared as a",
        "ratio measured in the same run. Timings are never pass/fail thresholds in tests.",
    ]
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        parts += ["", f"## {r['title']}", "", f"- command: `{r['command']}`",
                  f"- machine: {_machine(r['machine'])}", f"- run: {r['created']}", ""]
        parts.append("| " + " | ".join(r["headers"]) + " |")
        parts.append("|" + "|".join("---" for _ in r["headers"]) + "|")
        parts += ["| " + " | ".join(str(c) for c in row) + " |" for row in r["rows"]]
        if r.get("notes"):
            parts += ["", r["notes"]]
    return write_text_atomic(DOC, "\n".join(parts) + "\n")
