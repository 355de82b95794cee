"""The report compares every row with the baseline, names the chosen variant, merges runs."""

from __future__ import annotations

import copy
import json

from _cli import one_line, run_cli
from _report_results import make_results

from edgeopt.evaluate.results import save_results
from edgeopt.report import variant_rows
from edgeopt.report.html import render_html
from edgeopt.report.markdown import render_markdown
from edgeopt.report.merge import merge_results


def _cells(results: dict) -> dict[str, dict[str, str]]:
    headers, rows = variant_rows(results)
    return {r[0].removesuffix(" ✓"): dict(zip(headers, r)) for r in rows}


def _two(baseline: str | None = "fp32") -> dict:
    r = {"run": "two", "variants": [
        {"name": "fp32", "accuracy": {"top1": 0.90}, "latency": {"batch1": {"median_ms": 10.0}},
         "size": {"bytes": 4_000_000}},
        {"name": "int8", "accuracy": {"top1": 0.885}, "latency": {"batch1": {"median_ms": 4.0}},
         "size": {"bytes": 1_000_000}}]}
    if baseline is not None:
        r["baseline"] = baseline
    return r


def test_speed_up_compression_and_delta_of_a_made_up_pair():
    # baseline 10 ms / 4 MB / 90 %, variant 4 ms / 1 MB / 88.5 %
    cell = _cells(_two())
    assert (cell["int8"]["speed-up"], cell["int8"]["compression"], cell["int8"]["Δ top-1"]) == ("2.50x", "4.00x", "-1.50")
    assert (cell["fp32"]["speed-up"], cell["fp32"]["compression"], cell["fp32"]["Δ top-1"]) == ("1.00x", "1.00x", "–")
    # the reference can be any row: against int8, fp32 is 0.40x as fast and 0.25x as small
    cell = _cells(_two("int8"))
    assert (cell["fp32"]["speed-up"], cell["fp32"]["compression"], cell["fp32"]["Δ top-1"]) == ("0.40x", "0.25x", "+1.50")
    # no "baseline" key: the first row is the reference; a name that is no row: no comparison
    assert _cells(_two(None))["int8"]["speed-up"] == "2.50x"
    assert {c["speed-up"] for c in _cells(_two("gone")).values()} == {"–"}
    # a missing measurement is "–", never a division by zero
    r = _two()
    r["variants"][1]["latency"], r["variants"][1]["size"] = None, {"bytes": 0}
    assert (_cells(r)["int8"]["speed-up"], _cells(r)["int8"]["compression"]) == ("–", "–")


def test_rows_carry_the_change_speed_up_and_compression_against_the_baseline(results):
    cell = _cells(results)
    assert cell["baseline torch"]["Δ top-1"] == "–" and cell["baseline torch"]["speed-up"] == "1.00x"
    i8 = cell["int8"]
    assert i8["Δ top-1"] == "+0.00" and i8["speed-up"] == f"{0.689 / 0.037:.2f}x" == "18.62x"
    assert i8["compression"] == f"{973_000 / 259_000:.2f}x" == "3.76x"
    assert cell["pruned 50 + int8"]["Δ top-1"] == "-0.84"
    assert cell["pruned 50 + int8"]["compression"] == "12.16x"
    headers, _ = variant_rows(results, compact=True)
    assert headers == ["variant", "top-1 %", "Δ top-1", "p50 ms (b=1)", "speed-up", "size MB", "model MiB", "parity"]


def test_the_chosen_variant_is_marked_and_explained(results):
    # max drop 1 point and at most 0.5 MB: int8 keeps every point at 0.259 MB
    assert results["choice"]["chosen"] == "int8"
    _, rows = variant_rows(results)
    assert [r[0] for r in rows if r[0].endswith(" ✓")] == ["int8 ✓"]
    md = render_markdown(results)
    choice = md[md.index("## Choice"):md.index("## Recipe")]
    assert choice.splitlines()[2:] == [
        "Constraints: file size at most 0.5 MB; top-1 drop from the baseline at most 1 points.", "",
        ("Chosen: **int8**: int8 has the highest top-1 (98.61 %) of the 3 variant(s) meeting max_size_mb "
        "and max_drop."), "",
        "Meeting every constraint (3): int8, pruned 50, pruned 50 + int8.", ""]
    assert md.index("## Choice") > md.index("| student (trained alone) |")  # right after the table
    assert "```yaml\nname: demo\nvariants:\n  int8:\n  - quantize:\n      backend: onnxruntime\n```" in md

    page = render_html(results, [])
    assert page.count("<tr class='chosen'>") == 1 and "<tr class='chosen'><td>int8 ✓</td>" in page
    assert "<tr class='baseline'><td>baseline torch</td>" in page
    assert "<p class='choice'>Chosen: <b>int8</b>: int8 has the highest top-1 (98.61 %)" in page
    assert "<details><summary>Recipe</summary><pre>name: demo\n" in page


def test_when_nothing_meets_the_constraints_the_report_says_which_fails_by_how_much():
    r = make_results({"max_latency_ms": 0.01, "min_accuracy": 0.99})
    assert r["choice"]["chosen"] is None
    lat = next(f for f in r["choice"]["failures"] if f["constraint"] == "max_latency_ms")
    assert lat["closest"] == "student (trained alone)" and abs(lat["by"] - 0.005) < 1e-9
    md = render_markdown(r)
    assert "✓" not in md.split("## Choice")[0].split("|---")[1]  # no row marked
    choice = md[md.index("## Choice"):md.index("## Recipe")].splitlines()
    assert choice[2:] == [
        "Constraints: batch-1 median latency at most 0.01 ms; top-1 at least 99.00 %.", "",
        ("No variant meets the constraints; closest overall: student (trained alone) (max_latency_ms fails "
        "by 0.005 ms; min_accuracy fails by 2.9 points)."), "",
        ("- max_latency_ms (batch-1 median latency at most 0.01 ms) fails by 0.005 ms; closest: "
        "student (trained alone) at 0.015 ms"),
        "- min_accuracy (top-1 at least 99.00 %) fails by 0.39 points; closest: baseline torch at 98.61 %", ""]
    page = render_html(r, [])
    assert "<li>min_accuracy (top-1 at least 99.00 %) fails by 0.39 points; closest: baseline torch at 98.61 %</li>" in page
    assert "class='chosen'" not in page


def test_no_constraints_no_choice_section_and_no_recipe_no_recipe_block(results):
    for key in ("constraints", "choice", "recipe"):
        results.pop(key)
    md, page = render_markdown(results), render_html(results, [])
    assert "## Choice" not in md and "<h2>Choice" not in page
    assert "```yaml" not in md and "<details>" not in page
    assert "✓" not in "".join(r[0] for r in variant_rows(results)[1])


def test_merging_keeps_every_row_and_flags_another_machine():
    a, b = make_results(), make_results()
    b["machine"] = {**b["machine"], "cpu": "Other CPU"}
    b["variants"][0]["notes"] = ["size: no file"]
    before = copy.deepcopy(b)
    m = merge_results([a, b], ["a", "b"])
    assert b == before  # the parts are not changed
    names = [v["name"] for v in m["variants"]]
    assert len(names) == 14 and len(set(names)) == 14
    assert names[:7] == [v["name"] for v in a["variants"]] and names[7] == "baseline torch (b)"
    assert m["machines_differ"] and set(m["machines"]) == {"a", "b"}
    assert m["variants"][-1]["machine"]["cpu"] == "Other CPU" and "machine" not in m["variants"][0]
    assert any("another machine" in n for n in m["variants"][-1]["notes"])
    assert m["baseline"] == "baseline torch" and m["recipe"] == a["recipe"]  # from the first file
    assert m["choice"]["chosen"] == "int8"  # chosen again over all rows (the first of equals)
    assert len(m["choice"]["meets"]) == 6  # 3 rows of each part
    md = render_markdown(m)
    assert "**The rows were measured on different machines (a: AMD" in md and "b: Other CPU" in md
    assert "- **baseline torch (b)**: size: no file" in md
    assert "- **baseline torch (b)**: measured on another machine (Other CPU, from b)" in md


def test_merging_the_same_machine_says_nothing_and_a_third_copy_gets_its_own_name():
    m = merge_results([make_results(), make_results(), make_results()], ["x", "y", "y"])
    names = [v["name"] for v in m["variants"]]
    assert len(set(names)) == 21 and {"int8", "int8 (y)", "int8 (y 2)"} <= set(names)
    assert "machines_differ" not in m and "different machines" not in render_markdown(m)


def test_report_cli_merges_two_runs(tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        save_results(tmp_path / d / "results.json", make_results())
    code, out, err = run_cli(capsys, "report", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json",
                             "--out-dir", tmp_path / "ab")
    assert code == 0, err
    assert out.strip() == f"report: {tmp_path / 'ab' / 'report.html'} (and report.md)"
    merged = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert len(merged["variants"]) == 14 and merged["merged_from"] == ["a", "b"]
    page = (tmp_path / "ab" / "report.html").read_text()
    assert page.count("<td>int8") == 2 and "<td>int8 (b)</td>" in page
    assert (tmp_path / "ab" / "pareto_latency.png").is_file()
    code, _, err = run_cli(capsys, "report", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json")
    assert code == 2 and "needs --out-dir" in one_line(err)
    # the merge must not overwrite an input
    code, _, err = run_cli(capsys, "report", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json",
                           "--out-dir", tmp_path / "a")
    assert code == 2 and "holds one of the results being merged" in one_line(err)


def test_report_cli_two_files_in_one_folder_are_told_apart_by_file_name(tmp_path, capsys):
    b = make_results()
    b["machine"]["cpu"] = "Other CPU"
    save_results(tmp_path / "a.json", make_results())
    save_results(tmp_path / "b.json", b)
    code, _, err = run_cli(capsys, "report", tmp_path / "a.json", tmp_path / "b.json", "--out-dir", tmp_path / "m")
    assert code == 0, err
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert merged["merged_from"] == ["a.json", "b.json"] and merged["machines_differ"] is True
    assert "int8 (b.json)" in [v["name"] for v in merged["variants"]]
    assert "measured on different machines (a.json: " in (tmp_path / "m" / "report.md").read_text()


def test_report_cli_re_renders_one_file_beside_it(tmp_path, capsys):
    save_results(tmp_path / "results.json", make_results())
    code, _, err = run_cli(capsys, "report", tmp_path / "results.json")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pareto_latency.png", "pareto_size.png", "report.html", "report.md", "results.json"]
    assert "| int8 ✓ |" in (tmp_path / "report.md").read_text()


def test_report_cli_missing_or_corrupt_results_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", tmp_path / "nope.json")
    assert code == 2 and one_line(err) == f"ArtifactError: results file not found: {tmp_path / 'nope.json'}"
    (tmp_path / "bad.json").write_text("{not json")
    save_results(tmp_path / "good.json", make_results())
    code, _, err = run_cli(capsys, "report", tmp_path / "good.json", tmp_path / "bad.json", "--out-dir", tmp_path / "m")
    assert code == 2 and one_line(err).startswith(f"ArtifactError: {tmp_path / 'bad.json'} is not a JSON results file")
    assert not (tmp_path / "m").exists()  # nothing written
