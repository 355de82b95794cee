"""Issue 9, items 1 and 2, through the command line: a file never makes edgeopt run code,
and every command feeds a trained model with its own preprocessing (its ModelSpec)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _cli import run_cli

from edgeopt.models import create_model, save_checkpoint
from edgeopt.spec import ModelSpec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)




@pytest.fixture
def imagenet_style_ckpt(tmp_path, synthetic_data):
    """A checkpoint for the synthetic data (same classes, size) but trained elsewhere with
    ImageNet statistics: its spec's mean/std are not the dataset's."""
    spec = dataclasses.replace(synthetic_data.spec, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "imnet", create_model("simple_cnn", spec))


def _assert_normalised_with(x: torch.Tensor, mean, std) -> None:
    """x came from uint8 pixels normalised with (mean, std): undoing it lands on k/255."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    pixels = (x * s + m) * 255
    assert float((pixels - pixels.round()).abs().max()) < 1e-3
    assert float(pixels.min()) > -0.01 and float(pixels.max()) < 255.01


@pytest.mark.parametrize("command", [
    ["export", "{p}", "--to", "onnx"],
    ["eval", "{p}", "--no-memory", "--runs", "2"],
    ["quantize", "{p}", "--no-eval", "--no-histograms"],
    ["scan", "{p}", "--samples", "16"],
    ["bench", "{p}", "--compare", "--to", "onnx", "--runs", "2"],
])
def test_a_sidecar_naming_code_runs_nothing_in_any_command(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    p = save_checkpoint(tmp_path / "m", create_model("simple_cnn", ModelSpec((1, 8, 8), 10, (0.5,), (0.25,), dataset="digits")))
    side = tmp_path / "m.json"
    d = json.loads(side.read_text())
    d["arch"] = {"name": "os:system", "kwargs": {"command": "touch PWNED"}}
    side.write_text(json.dumps(d))
    code, _, err = run_cli(capsys, *[c.format(p=p) for c in command])
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("UntrustedCodeError:") and "--trust-model-code" in err
    assert not (tmp_path / "PWNED").exists()


def test_a_yaml_config_naming_code_is_refused_unless_named_on_the_command_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "job.yaml"
    cfg.write_text("model: {name: 'os:system', kwargs: {command: 'touch PWNED'}}\ndata: {name: digits}\n"
                   "train: {epochs: 1, max_steps_per_epoch: 1, progress: false}\n")
    code, _, err = run_cli(capsys, "train", "--config", str(cfg), "--out-dir", str(tmp_path / "run"))
    assert code == 2 and err.startswith("UntrustedCodeError: the model config asks to import and run 'os:system'")
    assert not (tmp_path / "PWNED").exists()


def test_a_model_argument_the_model_refuses_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--model", "simple_cnn", "--data", "digits", "--model-arg", "dropout=7",
                           "--epochs", "1", "--out-dir", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert "refused dropout=7" in err and "between 0 and 1" in err


def test_a_data_root_that_does_not_exist_is_an_error_not_another_copy(capsys, tmp_path, imagenet_style_ckpt):
    code, _, err = run_cli(capsys, "eval", str(imagenet_style_ckpt), "--data-root", str(tmp_path / "nowhere"),
                           "--no-memory", "--runs", "2")
    assert code == 2 and err.startswith("DataError: --data-root") and "is not a folder" in err


def test_data_root_alone_keeps_the_checkpoints_dataset(tmp_path, imagenet_style_ckpt):
    from edgeopt.jobs import load_data_for
    from edgeopt.pipeline import DataConfig

    (tmp_path / "root").mkdir()
    dm = load_data_for(imagenet_style_ckpt, DataConfig(name=None, root=str(tmp_path / "root")))
    assert dm.name == "synthetic"  # not the training default (digits)


def test_eval_export_and_calibration_use_the_checkpoints_statistics(imagenet_style_ckpt, monkeypatch, tmp_path):
    import edgeopt.evaluate as ev
    import edgeopt.export as ex
    import edgeopt.quantize._base as qb
    from edgeopt.jobs import evaluate_path, export_path
    from edgeopt.quantize import QuantConfig
    from edgeopt.quantize.jobs import quantize_checkpoint

    seen = {}

    class Seen(Exception):
        pass

    def calibrate(model, cfg, dm, out, progress):
        seen["calib"] = dm.calibration(32)  # what the backend would calibrate on
        raise Seen

    monkeypatch.setattr(ex, "export_model", lambda model, fmt, out, cfg, samples, verify: seen.setdefault("export", samples))
    monkeypatch.setattr(ev, "evaluate_variant", lambda name, target, dm, **kw: seen.setdefault("eval", dm))
    monkeypatch.setattr(qb, "quantize", calibrate)
    export_path(imagenet_style_ckpt, "onnx")
    evaluate_path(imagenet_style_ckpt)
    with pytest.raises(Seen):
        quantize_checkpoint(imagenet_style_ckpt, QuantConfig(), tmp_path / "q")
    _assert_normalised_with(seen["export"], IMAGENET_MEAN, IMAGENET_STD)
    assert seen["eval"].spec.mean == IMAGENET_MEAN and seen["eval"].spec.std == IMAGENET_STD
    x, _ = seen["eval"].samples(32)
    _assert_normalised_with(x, IMAGENET_MEAN, IMAGENET_STD)
    _assert_normalised_with(seen["calib"], IMAGENET_MEAN, IMAGENET_STD)


def test_reversed_class_names_are_refused(capsys, tmp_path, synthetic_data):
    spec = dataclasses.replace(synthetic_data.spec, class_names=tuple(reversed(synthetic_data.spec.class_names)))
    p = save_checkpoint(tmp_path / "rev", create_model("simple_cnn", spec))
    code, _, err = run_cli(capsys, "eval", str(p), "--no-memory", "--runs", "2")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("DataError:") and "same classes in another order" in err and "0: 'class9' vs 'class0'" in err


def test_data_of_another_shape_is_refused_before_work_in_quantize_and_scan(capsys, imagenet_style_ckpt):
    for cmd in (["quantize", str(imagenet_style_ckpt), "--data", "digits"],
                ["scan", str(imagenet_style_ckpt), "--data", "digits"]):
        code, _, err = run_cli(capsys, *cmd)
        assert code == 2 and err.startswith("DataError:") and "3-channel" in err, err


def test_resize_feeds_data_of_another_size(synthetic_data):
    from edgeopt.data import data_for_model
    from edgeopt.errors import DataError

    big = dataclasses.replace(synthetic_data.spec, input_shape=(3, 24, 24))
    with pytest.raises(DataError, match="expects 24x24 images.*--resize"):
        data_for_model(synthetic_data, big)
    dm = data_for_model(synthetic_data, big, resize=True)
    x, _ = dm.samples(4)
    assert tuple(x.shape) == (4, 3, 24, 24)
    xb, _ = next(iter(dm.loader("train", 8, augment=True)))
    assert tuple(xb.shape) == (8, 3, 24, 24)
