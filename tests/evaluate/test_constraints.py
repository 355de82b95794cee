"""Constraints and the choice among measured variants (edgeopt.evaluate.constraints)."""

from __future__ import annotations

import copy

import pytest

from edgeopt.errors import ConfigError
from edgeopt.evaluate import Constraints, apply_choice, choose, new_results, save_results
from edgeopt.evaluate.constraints import describe_choice, rank_closest


def _row(name, top1, ms, size_bytes, mem):
    return {"name": name, "accuracy": None if top1 is None else {"top1": top1, "n": 359},
            "latency": None if ms is None else {"batch1": {"median_ms": ms}},
            "size": None if size_bytes is None else {"bytes": size_bytes},
            "memory": None if mem is None else {"delta_mb": mem}}


#: made-up rows: two int8 variants tie on top-1 and latency (the smaller file wins); the
#: pruned one is fastest but has no memory measurement
RESULTS = {"baseline": "fp32 torch", "variants": [
    _row("fp32 torch", 0.980, 2.7, 1_200_000, 30.0),
    _row("fp32 onnx", 0.980, 1.5, 1_100_000, 20.0),
    _row("int8 onnxruntime", 0.975, 0.9, 300_000, 12.0),
    _row("int8 torch-x86", 0.975, 0.9, 350_000, 15.0),
    _row("pruned 50% onnx", 0.960, 0.6, 200_000, None),
]}


def test_the_highest_top1_meeting_every_bound_is_chosen():
    c = choose(RESULTS, Constraints(max_latency_ms=2.0, min_accuracy=0.95))
    # fp32 torch (2.7 ms) misses the latency; of the rest fp32 onnx has the highest top-1
    assert c == {"chosen": "fp32 onnx", "reason": c["reason"], "failures": [],
                 "meets": ["fp32 onnx", "int8 onnxruntime", "int8 torch-x86", "pruned 50% onnx"]}
    assert "98.00 %" in c["reason"] and "4 variant(s)" in c["reason"]


def test_ties_go_to_lower_latency_then_smaller_size():
    c = choose(RESULTS, Constraints(max_latency_ms=1.0, min_accuracy=0.97))
    assert c["meets"] == ["int8 onnxruntime", "int8 torch-x86"]
    assert c["chosen"] == "int8 onnxruntime"  # same top-1 and latency; 0.30 MB < 0.35 MB
    r = copy.deepcopy(RESULTS)
    r["variants"][3]["latency"]["batch1"]["median_ms"] = 0.8  # now int8 torch-x86 is faster
    assert choose(r, Constraints(max_latency_ms=1.0, min_accuracy=0.97))["chosen"] == "int8 torch-x86"


def test_size_is_mb_of_10_6_bytes_and_memory_is_the_model_share():
    c = choose(RESULTS, Constraints(max_size_mb=0.3, max_memory_mb=12.0))
    assert c["chosen"] == "int8 onnxruntime"  # exactly 0.3 MB and 12.0 MiB: bounds are inclusive
    c = choose(RESULTS, Constraints(max_size_mb=0.29))  # only the pruned one is smaller
    assert c["chosen"] == "pruned 50% onnx"


def test_none_meets_lists_each_failing_bound_with_the_closest_variant():
    c = choose(RESULTS, Constraints(max_latency_ms=0.5, min_accuracy=0.99, max_drop=1.0))
    assert c["chosen"] is None and c["meets"] == []
    by = {f["constraint"]: f for f in c["failures"]}
    assert list(by) == ["max_latency_ms", "min_accuracy", "max_drop"]
    lat, acc, drop = by["max_latency_ms"], by["min_accuracy"], by["max_drop"]
    assert (lat["closest"], lat["limit"], lat["value"], lat["unit"]) == ("pruned 50% onnx", 0.5, 0.6, "ms")
    assert lat["by"] == pytest.approx(0.1)
    # both fp32 rows have 0.98: the first in the results wins; by = 0.99 - 0.98
    assert (acc["closest"], acc["value"], acc["unit"]) == ("fp32 torch", 0.98, "fraction")
    assert acc["by"] == pytest.approx(0.01)
    # only the pruned row loses more than 1 point against fp32 torch (98.0 - 96.0 = 2.0)
    assert (drop["closest"], drop["value"], drop["by"], drop["unit"]) == ("pruned 50% onnx", 2.0, 1.0, "points")
    # closest overall: int8 rows fail two bounds (latency by 0.4/0.5 = 80 %), the pruned row three
    assert "closest: int8 onnxruntime (max_latency_ms fails by 0.4 ms; min_accuracy fails by 1.5 points)" \
        in c["reason"]


def test_a_missing_measurement_does_not_meet_and_the_reason_says_so():
    c = choose(RESULTS, Constraints(max_latency_ms=0.7, max_memory_mb=50))
    # only the pruned row is fast enough, and it has no memory measurement
    assert c["chosen"] is None
    assert [f["constraint"] for f in c["failures"]] == ["max_latency_ms"]  # every measured memory is <= 50
    f = c["failures"][0]
    assert (f["closest"], f["value"]) == ("int8 onnxruntime", 0.9) and f["by"] == pytest.approx(0.2)
    # int8 onnxruntime misses by 0.2 / 0.7 = 29 %; the pruned row's missing memory counts as infinitely far
    assert "closest: int8 onnxruntime" in c["reason"]
    assert "max_memory_mb needs memory" in c["reason"]
    r = {"variants": [_row("a", 0.9, 1.0, 1000, None)]}
    f = choose(r, Constraints(max_memory_mb=10))["failures"]
    assert f == [{"constraint": "max_memory_mb", "limit": 10.0, "closest": None, "value": None, "by": None,
                  "unit": "MiB"}]


def test_the_baseline_is_the_named_row_else_the_first():
    drop = Constraints(max_drop=1.0)
    # against fp32 torch (98.0 %) the pruned row drops 2 points; against int8 (97.5 %) 1.5
    assert "pruned 50% onnx" not in choose(RESULTS, drop)["meets"]
    r = {**RESULTS, "baseline": "pruned 50% onnx"}
    assert choose(r, drop)["meets"] == [v["name"] for v in RESULTS["variants"]]  # everything beats it
    r = {"variants": RESULTS["variants"]}  # no baseline named: the first row
    assert choose(r, drop)["meets"] == ["fp32 torch", "fp32 onnx", "int8 onnxruntime", "int8 torch-x86"]
    r = {"baseline": "gone", "variants": RESULTS["variants"]}  # a named row that is not there: no drop
    c = choose(r, drop)
    assert c["chosen"] is None and c["failures"][0]["closest"] is None


def test_rank_closest_orders_by_failing_bounds_then_relative_violation():
    names = rank_closest(RESULTS, Constraints(max_latency_ms=0.5, min_accuracy=0.99))
    # int8 rows: 2 fails, worst 0.4/0.5; pruned: 2 fails, worst 0.1/0.5 (and 3 points); fp32 onnx 1.0/0.5
    assert names == ["pruned 50% onnx", "int8 onnxruntime", "int8 torch-x86", "fp32 onnx", "fp32 torch"]


def test_apply_choice_stores_constraints_and_choice_and_the_file_validates(tmp_path):
    results = new_results("t")
    results["variants"] = copy.deepcopy(RESULTS["variants"])
    for v in results["variants"]:  # the schema's other keys
        v.update({"format": "onnx", "runtime": "onnxruntime", "precision": "fp32", "artifact": None,
                  "lineage": [], "macs": None, "energy": None, "notes": []})
    results["baseline"] = "fp32 torch"
    out = apply_choice(results, Constraints(max_latency_ms=1.0, min_accuracy=0.97))
    assert out is results
    assert results["constraints"] == {"max_latency_ms": 1.0, "max_size_mb": None, "max_memory_mb": None,
                                      "min_accuracy": 0.97, "max_drop": None}
    assert results["choice"]["chosen"] == "int8 onnxruntime"
    save_results(tmp_path / "results.json", results)  # extra top-level keys pass the schema


def test_describe_choice_in_one_line():
    r = apply_choice(copy.deepcopy(RESULTS), Constraints(max_latency_ms=1.0, min_accuracy=0.97))
    assert describe_choice(r) == ("chosen: int8 onnxruntime — meets max_latency_ms (0.9 ms <= 1.0) and "
                                  "min_accuracy (97.5 % >= 97.0 %)")
    r = apply_choice(r, Constraints(max_latency_ms=0.5, min_accuracy=0.99))
    assert describe_choice(r) == ("no variant meets the constraints: max_latency_ms fails by 0.1 ms "
                                  "(closest: pruned 50% onnx); min_accuracy fails by 1.0 points (closest: fp32 torch)")


def test_no_variants_chooses_nothing():
    assert choose({"variants": []}, Constraints(max_latency_ms=1.0)) == {
        "chosen": None, "reason": "no variants to choose from", "meets": [], "failures": []}


@pytest.mark.parametrize("kwargs, words", [
    ({"min_accuracy": 90}, "a fraction, e.g. 0.9 for 90 %"),
    ({"min_accuracy": -0.1}, "a fraction"),
    ({"max_latency_ms": 0.0}, "must be > 0"),
    ({"max_size_mb": float("nan")}, "finite"),
    ({"max_drop": 150.0}, "[0, 100]"),
])
def test_bad_bounds_are_one_line_config_errors(kwargs, words):
    with pytest.raises(ConfigError, match="Constraints") as e:
        Constraints(**kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        Constraints.from_dict(kwargs)
