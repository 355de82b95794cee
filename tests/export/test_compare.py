"""compare_runtimes: one row per format and ONNX level, parity checked, ratios to torch eager."""

from __future__ import annotations

import json

import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.export import EXPORTERS, Exporter, OnnxExportConfig
from edgeopt.export.compare import STATUSES, compare_runtimes
from edgeopt.models import create_model

FAST = {"onnx": {"dynamo": False}}  # the legacy exporter: ~0.2 s instead of ~5 s


@pytest.fixture(scope="module")
def rows(digits_data, tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("simple_cnn", digits_data.spec)
    out = tmp_path_factory.mktemp("cmp")
    return compare_runtimes(model, digits_data, out, formats=["onnx", "torchscript"], runs=5, warmup=1,
                            throughput_batch=8, configs=FAST)


def test_rows_for_torch_torchscript_and_each_onnx_level(rows):
    names = [r["name"] for r in rows]
    assert names == ["torch", "onnx", "onnx-basic", "onnx-extended", "onnx-all", "torchscript"]
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["precision"] == "fp32" and r["threads"] == 1
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["throughput"] > 0
        assert r["throughput_batch"] == 8 and r["size_bytes"] > 100_000  # simple_cnn: ~0.97 MB fp32
        assert r["speedup_vs_torch"] == pytest.approx(rows[0]["p50_ms"] / r["p50_ms"])
        assert r["throughput_vs_torch"] == pytest.approx(r["throughput"] / rows[0]["throughput"])
    for r in rows[1:]:
        assert r["parity_passed"] is True
        assert r["parity"]["n_samples"] == 256 and r["parity"]["max_abs_diff"] <= 1e-4
        assert r["parity"]["top1_agreement"] == 1.0
    assert rows[0]["speedup_vs_torch"] == 1.0 and rows[0]["parity_passed"] is None
    json.dumps(rows)  # JSON-ready


def test_each_row_is_its_own_artifact(rows):
    from edgeopt.artifact import Artifact

    levels = {r["name"]: Artifact.load(r["path"]).meta.get("ort_optimization") for r in rows if r["format"] == "onnx"}
    assert levels == {"onnx": None, "onnx-basic": "basic", "onnx-extended": "extended", "onnx-all": "all"}
    assert Artifact.load(rows[-1]["path"]).meta["parity"]["passed"] is True


def test_unavailable_and_unrunnable_formats(digits_data, tmp_path, monkeypatch):
    """A format whose dependency is missing is skipped; one that exports but cannot run is listed."""
    base = EXPORTERS.get("onnx")
    missing = Exporter("fake-missing", ".onnx", OnnxExportConfig, base.export,
                       available=lambda: "MissingDependencyError: fake export needs the 'fake' extra")
    monkeypatch.setitem(EXPORTERS._items, "fake-missing", missing)
    torch.manual_seed(0)
    model = create_model("simple_cnn", digits_data.spec)

    import edgeopt.runtime as rt
    from edgeopt.errors import MissingDependencyError

    real = rt.get_runner

    def no_onnxruntime(target, runtime=None, threads=None, **kw):
        if getattr(target, "format", None) == "onnx":
            raise MissingDependencyError("the onnxruntime runtime cannot run on this OS")
        return real(target, runtime, threads, **kw)

    monkeypatch.setattr(rt, "get_runner", no_onnxruntime)
    out = compare_runtimes(model, digits_data.samples(32)[0], tmp_path, formats=["fake-missing", "onnx"],
                           runs=2, warmup=0, throughput_batch=4, configs=FAST)
    by = {r["name"]: r for r in out}
    assert by["fake-missing"]["status"] == "skipped"
    assert by["fake-missing"]["reason"].startswith("MissingDependencyError")
    assert by["onnx"]["status"] == "exported, cannot run on this OS"
    assert by["onnx"]["size_bytes"] > 0 and by["onnx"]["p50_ms"] is None
    assert {r["status"] for r in out} <= set(STATUSES)


def test_bad_arguments(digits_data, tmp_path):
    model = create_model("simple_cnn", digits_data.spec)
    with pytest.raises(ConfigError, match="unknown export format"):
        compare_runtimes(model, digits_data, tmp_path, formats=["onx"])
    with pytest.raises(ConfigError, match="runs=0"):
        compare_runtimes(model, digits_data, tmp_path, runs=0)


def test_cli_bench_compare_json_and_table(digits_data, tmp_path, capsys, monkeypatch):
    from edgeopt.cli import main
    from edgeopt.models import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.safetensors", create_model("simple_cnn", digits_data.spec))
    # --to torchscript: the ONNX rows use the (slower) default dynamo exporter, tested above
    args = ["bench", str(ckpt), "--compare", "--to", "torchscript", "--runs", "3", "--warmup", "0",
            "--batch-size", "1", "--batch-size", "8", "--out-dir", str(tmp_path / "arts")]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"]) for r in rows] == [("torch", "ok"), ("torchscript", "ok")]
    assert rows[1]["parity_passed"] is True and rows[1]["parity"]["n_samples"] == 256  # digits test images
    assert rows[1]["throughput_batch"] == 8 and rows[1]["speedup_vs_torch"] > 0
    assert (tmp_path / "arts" / "torchscript.torchscript").is_file()
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells at 80 columns off a terminal
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "torchscript" in out and "pass" in out and "vs eager" in out


def test_cli_bench_compare_needs_a_checkpoint(tmp_path, capsys):
    from edgeopt.cli import main

    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["bench", str(tmp_path / "m.onnx"), "--compare"]) == 2
    assert "needs a checkpoint" in capsys.readouterr().err


def test_require_success_needs_one_format_that_ran_and_matched():
    from edgeopt.errors import ExportMismatchError, MissingDependencyError, UnsupportedModelError
    from edgeopt.export.compare import _row, require_success

    torch_row = _row("torch", "module")
    ok = _row("onnx", "onnx", parity_passed=True)
    nan = {"max_abs_diff": float("inf"), "top1_agreement": 0.1}
    bad = _row("torchscript", "torchscript", parity_passed=False, parity=nan)
    failed = _row("tflite", "tflite", status="failed", reason="UnsupportedModelError: layer x")
    skipped = _row("openvino", "openvino", status="skipped", reason="MissingDependencyError: pip install")
    require_success([torch_row, bad, ok])  # one success is enough
    with pytest.raises(ExportMismatchError, match=r"^no format exported, ran here and matched torch eager "
                                                  r"for m: torchscript: parity FAIL \(max abs diff inf, "
                                                  r"top-1 agreement 10.0%\); tflite: failed"):
        require_success([torch_row, bad, failed], "m")
    with pytest.raises(MissingDependencyError, match="openvino: skipped"):
        require_success([torch_row, skipped])
    with pytest.raises(UnsupportedModelError, match=r"tflite: failed \(UnsupportedModelError: layer x\)"):
        require_success([torch_row, failed, skipped])


def test_nan_weights_are_refused_before_any_export(digits_data, tmp_path):
    from edgeopt.errors import NumericalError

    model = create_model("simple_cnn", digits_data.spec)
    with torch.no_grad():
        model.features[0][1].running_var[3] = float("inf")
    with pytest.raises(NumericalError, match=r"^cannot compare runtimes: tensor 'features.0.1.running_var' "
                                             r"\[32\] holds 0 NaN and 1 Inf of 32 values"):
        compare_runtimes(model, digits_data, tmp_path / "arts", formats=["torchscript"])
    assert not (tmp_path / "arts").exists() or not any((tmp_path / "arts").iterdir())
