"""The results schema: round trip, validation, foreign files refused."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import ArtifactError
from edgeopt.evaluate import (
    RESULTS_SCHEMA_VERSION,
    add_variant,
    load_results,
    new_results,
    new_variant,
    save_results,
    validate_results,
)


def _results():
    r = new_results("unit", {"epochs": 1, "formats": ["onnx"]})
    v = new_variant(
        "fp32 onnx", format="onnx", runtime="onnxruntime", artifact="m.onnx",
        lineage=[{"step": "export", "format": "onnx"}],
        accuracy={"top1": 0.5, "top5": None, "n": 4}, latency={"batch1": {"median_ms": 1.0}, "throughput": None},
        size={"bytes": 10, "gzip_bytes": 5, "params": 2, "nonzero_params": 1},
        macs={"total_macs": 12, "total_flops": 24}, notes=["memory not measured: test"],
    )
    add_variant(r, v)
    return r


def test_round_trip(tmp_path):
    r = _results()
    assert r["schema_version"] == RESULTS_SCHEMA_VERSION == 1
    assert set(r) >= {"schema_version", "edgeopt_version", "run", "created", "machine", "config", "variants"}
    p = save_results(tmp_path / "results.json", r)
    assert load_results(p) == json.loads(json.dumps(r))
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"name": "some other tool", "version": 3}', "not an edgeopt results file"),
        ("[1, 2, 3]", "not an edgeopt results file"),
        ("not json at all", "not a JSON results file"),
        ('{"schema_version": 99}', "newer than this edgeopt"),
    ],
)
def test_foreign_files_are_refused_in_one_line(tmp_path, content, match):
    p = tmp_path / "foreign.json"
    p.write_text(content)
    with pytest.raises(ArtifactError, match=match) as err:
        load_results(p)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_results(tmp_path / "none.json")


def test_validation_catches_problems():
    r = _results()
    r["variants"].append(dict(r["variants"][0]))
    with pytest.raises(ArtifactError, match="duplicate variant name"):
        validate_results(r)
    r = _results()
    del r["variants"][0]["latency"]
    with pytest.raises(ArtifactError, match="lacks key"):
        validate_results(r)
    r = _results()
    r["variants"][0]["accuracy"]["top1"] = float("nan")
    with pytest.raises(ArtifactError, match="finite"):
        validate_results(r)


def test_add_variant_replaces_same_name():
    r = _results()
    add_variant(r, new_variant("fp32 onnx", runtime="torch"))
    add_variant(r, new_variant("int8 onnx"))
    assert [(v["name"], v["runtime"]) for v in r["variants"]] == [("fp32 onnx", "torch"), ("int8 onnx", "unknown")]


def test_save_writes_inf_as_null_with_a_note(tmp_path):
    r = _results()
    r["variants"][0]["parity"] = {"sqnr_db": float("inf"), "passed": True}
    p = save_results(tmp_path / "results.json", r)
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    json.loads(p.read_text(), parse_constant=refuse)  # strict JSON: no NaN / Infinity
    v = load_results(p)["variants"][0]
    assert v["parity"]["sqnr_db"] is None and v["parity"]["passed"] is True
    assert any("variants[0].parity.sqnr_db was inf" in n for n in v["notes"])
    assert r["variants"][0]["parity"]["sqnr_db"] == float("inf")  # the caller's dict is untouched
