"""The report compares every row with the baseline, names the chosen variant, merges runs."""

from __future__ import annotations

import json

from _report_results import make_results

from edgeopt.report import variant_rows
from edgeopt.report.markdown import render_markdown
from edgeopt.report.merge import merge_results


def test_rows_carry_the_change_speed_up_and_compression_against_the_baseline(results):
    headers, rows = variant_rows(results)
    cell = {r[0].rstrip(" ✓"): dict(zip(headers, r)) for r in rows}
    assert cell["baseline torch"]["Δ top-1"] == "–" and cell["baseline torch"]["speed-up"] == "1.00x"
    i8 = cell["int8"]
    assert i8["Δ top-1"] == "+0.00" and i8["speed-up"] == f"{0.689 / 0.037:.2f}x"
    assert i8["compression"] == f"{973_000 / 259_000:.2f}x"
    assert cell["pruned 50 + int8"]["Δ top-1"] == "-0.84"
    assert cell["pruned 50 + int8"]["compression"] == "12.16x"


def test_the_chosen_variant_is_marked_and_explained(results):
    # max drop 1 point and at most 0.5 MB: int8 keeps every point at 0.259 MB
    assert results["choice"]["chosen"] == "int8"
    _, rows = variant_rows(results)
    assert [r[0] for r in rows if r[0].endswith(" ✓")] == ["int8 ✓"]
    md = render_markdown(results)
    assert "## Choice" in md and "Chosen: **int8**" in md
    assert "file size at most 0.5 MB; top-1 drop from the baseline at most 1 points." in md
    assert "```yaml" in md and "backend: onnxruntime" in md  # the recipe


def test_when_nothing_meets_the_constraints_the_report_says_which_fails_by_how_much():
    r = make_results({"max_latency_ms": 0.01, "min_accuracy": 0.99})
    assert r["choice"]["chosen"] is None
    md = render_markdown(r)
    assert "No variant meets the constraints" in md
    lat = next(f for f in r["choice"]["failures"] if f["constraint"] == "max_latency_ms")
    assert lat["closest"] == "student (trained alone)" and abs(lat["by"] - 0.005) < 1e-9
    assert "max_latency_ms (batch-1 median latency at most 0.01 ms) fails by 0.005 ms; closest: " \
           "student (trained alone)" in md
    acc = next(f for f in r["choice"]["failures"] if f["constraint"] == "min_accuracy")
    assert "fails by 0.39 points" in md and acc["closest"] in ("baseline torch", "baseline onnx", "int8")


def test_merging_keeps_every_row_and_flags_another_machine():
    a, b = make_results(), make_results()
    b["machine"] = {**b["machine"], "cpu": "Other CPU"}
    m = merge_results([a, b], ["a", "b"])
    names = [v["name"] for v in m["variants"]]
    assert len(names) == 14 and "int8 (b)" in names and len(set(names)) == 14
    assert m["machines_differ"] and any("another machine" in n for n in m["variants"][-1]["notes"])
    assert m["choice"]["chosen"] == "int8"  # chosen again over all rows (the first of equals)


def test_report_cli_merges_two_runs(tmp_path, capsys):
    from _cli import run_cli

    from edgeopt.evaluate.results import save_results

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        save_results(tmp_path / d / "results.json", make_results())
    code, out, err = run_cli(capsys, "report", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json",
                             "--out-dir", tmp_path / "ab")
    assert code == 0, err
    merged = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert len(merged["variants"]) == 14 and merged["merged_from"] == ["a", "b"]
    assert (tmp_path / "ab" / "report.html").is_file() and (tmp_path / "ab" / "pareto_latency.png").is_file()
    code, _, err = run_cli(capsys, "report", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json")
    assert code == 2 and "needs --out-dir" in err
