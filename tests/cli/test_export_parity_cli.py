"""``edgeopt export`` / ``bench --compare``: --rtol/--atol and --method reach the export config."""

from __future__ import annotations

import json

import pytest
import torch
from _cli import run_cli


@pytest.fixture
def ckpt(tmp_path, digits_data):
    from edgeopt.models import create_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "m", create_model("simple_cnn", digits_data.spec))


def test_export_prints_the_relative_error_and_takes_a_tolerance(capsys, ckpt, monkeypatch):
    from edgeopt.runtime.onnxruntime_runner import OnnxRuntimeRunner

    code, out, _ = run_cli(capsys, "export", str(ckpt), "--to", "onnx")
    assert code == 0 and "relative to the logits' scale" in out and "allowed" in out, out
    real = OnnxRuntimeRunner.predict  # a runtime 0.1 % off: beyond fp32's default, within --rtol 2e-3
    monkeypatch.setattr(OnnxRuntimeRunner, "predict", lambda self, b: real(self, b) * 1.001)
    code, _, err = run_cli(capsys, "export", str(ckpt), "--to", "onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("ExportMismatchError"), err
    assert f"kept {ckpt.with_suffix('.onnx')}" in err
    code, out, err = run_cli(capsys, "export", str(ckpt), "--to", "onnx", "--rtol", "2e-3", "--json")
    assert code == 0, err
    parity = json.loads(out)["parity"]
    assert code == 0 and parity["passed"] and parity["thresholds"]["rtol"] == 2e-3


def test_export_method_script_for_torchscript(capsys, ckpt):
    code, out, _ = run_cli(capsys, "export", str(ckpt), "--to", "torchscript", "--method", "script", "--json")
    res = json.loads(out)
    assert code == 0 and res["parity"]["passed"]
    side = json.loads((ckpt.parent / "m.torchscript.edgeopt.json").read_text())
    assert side["meta"]["method"] == "script"
    code, _, err = run_cli(capsys, "export", str(ckpt), "--to", "onnx", "--method", "script")
    assert code == 2 and "torchscript export option" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", str(ckpt), "--to", "torchscript", "--method", "compile")
    assert code == 2 and "trace, script" in err


def test_bench_compare_takes_a_tolerance(capsys, ckpt, tmp_path):
    code, out, _ = run_cli(capsys, "bench", str(ckpt), "--compare", "--to", "torchscript", "--runs", "3",
                           "--warmup", "1", "--batch-size", "4", "--rtol", "1e-3", "--atol", "0", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["torchscript"]["parity_passed"], rows["torchscript"]
    assert rows["torchscript"]["parity"]["thresholds"]["rtol"] == 1e-3
    assert rows["torchscript"]["parity"]["thresholds"]["atol"] == 0.0
