"""The edgeopt command: listings, --json, --dump-config round trip, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from _cli import run_cli


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for cmd in ("train", "eval", "bench", "export", "models", "datasets", "runtimes", "formats", "demo"):
        assert cmd in out


def test_models_json_lists_the_zoo_with_parameter_counts(capsys):
    from edgeopt.models import list_models

    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(list_models()) <= set(rows)
    assert 200_000 < rows["simple_cnn"]["params"] < 400_000


def test_datasets_and_runtimes_json(capsys):
    code, out, _ = run_cli(capsys, "datasets", "--json")
    assert code == 0
    names = {r["name"] for r in json.loads(out)}
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "synthetic"} <= names
    code, out, _ = run_cli(capsys, "runtimes", "--json")
    rows = {r["runtime"]: r for r in json.loads(out)}
    assert rows["torch"]["installed"] and rows["onnxruntime"]["installed"]


def test_train_dump_config_round_trips_through_config_file(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "train", "--model", "simple_cnn", "--data", "digits", "--epochs", "3",
                           "--lr", "0.02", "--model-arg", "dropout=0.1", "--dump-config")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.02
    assert cfg["model"] == {"name": "simple_cnn", "kwargs": {"dropout": 0.1}, "weights": None}
    path = tmp_path / "job.yaml"
    path.write_text(out)
    code, out2, _ = run_cli(capsys, "train", "--config", str(path), "--dump-config")
    assert code == 0 and yaml.safe_load(out2) == cfg
    # a flag overrides the file
    code, out3, _ = run_cli(capsys, "train", "--config", str(path), "--epochs", "5", "--dump-config")
    assert yaml.safe_load(out3)["train"]["epochs"] == 5


@pytest.mark.parametrize(
    "args, error",
    [
        (["train", "--model", "no_such_model", "--data", "digits", "--epochs", "1"], "ConfigError"),
        (["train", "--model", "simple_cnn", "--data", "imagefolder:/no/such/dir", "--epochs", "1"], "DataError"),
        (["train", "--model", "simple_cnn", "--data", "digits", "--epochs", "0", "--dump-config"], "ConfigError"),
        (["eval", "/no/such/model.safetensors", "--data", "digits"], "Error"),
        (["export", "/no/such/model.safetensors", "--to", "onnx"], "ModelLoadError"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, error):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert error in lines[0] and "Traceback" not in err


def test_bad_config_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [unclosed\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and err.startswith("ConfigError") and len(err.strip().splitlines()) == 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train: {epoch: 3}\n")
    code, _, err = run_cli(capsys, "train", "--config", str(unknown))
    assert code == 2 and "epoch" in err and len(err.strip().splitlines()) == 1


def test_console_script_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "formats", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "onnx" in {r["format"] for r in json.loads(proc.stdout)}


def test_docs_cli_md_covers_every_command():
    from pathlib import Path

    from edgeopt.cli.app import app

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(names) >= 9
    for name in names:
        assert f"## edgeopt {name}" in doc, f"docs/cli.md lacks {name}: run scripts/gen_cli_docs.py"


def test_artifact_whose_input_shape_does_not_match_the_data_is_one_line(capsys, tmp_path):
    from edgeopt.data import get_dataset
    from edgeopt.export import OnnxExportConfig, export_model
    from edgeopt.models import create_model

    digits = get_dataset("digits")  # 1x8x8 images
    model = create_model("simple_cnn", digits.spec).eval()
    art = export_model(model, "onnx", tmp_path / "m.onnx", OnnxExportConfig(dynamo=False),
                       samples=digits.samples(32)[0]).artifact
    code, _, err = run_cli(capsys, "eval", str(art.path), "--data", "synthetic", "--no-memory")  # 3x16x16
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    # the data does not fit the model: edgeopt.data.data_for_model says how
    assert err.startswith("DataError") and "takes 1-channel images" in err, err


def test_missing_extra_prints_the_pip_command(capsys, tmp_path, monkeypatch):
    """A format whose backend is not installed says which extra to install."""
    from edgeopt.data import get_dataset
    from edgeopt.models import create_model, save_checkpoint

    digits = get_dataset("digits")
    ckpt = save_checkpoint(tmp_path / "m", create_model("simple_cnn", digits.spec))
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    code, _, err = run_cli(capsys, "export", str(ckpt), "--to", "openvino", "--no-verify")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert 'pip install "edgeopt[openvino]"' in err
