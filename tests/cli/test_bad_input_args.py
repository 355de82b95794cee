"""Issue 9, "every bad input is one line": bad arguments and bad checkpoints through the CLI.

Each case exits with status 2 and prints exactly one line on stderr (``ErrorName: message``,
no traceback), or, where the input is legal but the result would mislead, finishes with a
one-line ``warning:``. The library-level tests of each check sit beside its module's tests.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from _cli import one_line, run_cli
from PIL import Image

from edgeopt.models import create_model, save_checkpoint


@pytest.fixture
def ckpt(tmp_path, digits_data):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "m", create_model("simple_cnn", digits_data.spec))


@pytest.fixture
def nan_ckpt(tmp_path, digits_data):
    model = create_model("simple_cnn", digits_data.spec)
    with torch.no_grad():
        model.features[0][0].weight[0, 0, 0, 0] = float("nan")
    return save_checkpoint(tmp_path / "nan", model)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "cache"))


# -- 1: a pickle renamed .safetensors ------------------------------------------------------
def test_pickle_renamed_safetensors_beside_a_valid_sidecar(capsys, ckpt, digits_data):
    torch.save(create_model("simple_cnn", digits_data.spec).state_dict(), ckpt)
    side = ckpt.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["sha256"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()  # the sidecar vouches for it
    side.write_text(json.dumps(meta))
    code, _, err = run_cli(capsys, "export", ckpt, "--to", "onnx")
    line = one_line(err)
    assert code == 2 and line.startswith(f"ModelLoadError: {ckpt} is not a safetensors file: it is a "
                                         f"PyTorch torch.save file (a pickle)")
    assert "edgeopt import" in line and "header too large" not in line


# -- 2: thread counts ------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["eval", "{ckpt}", "--threads", "100000", "--no-memory"],
    ["bench", "{ckpt}", "--threads", "100000", "--runs", "2"],
    ["bench", "{ckpt}", "--compare", "--to", "torchscript", "--threads", "100000"],
    ["quantize", "{ckpt}", "--threads", "100000"],
    ["train", "--model", "simple_cnn", "--data", "digits", "--epochs", "1", "--threads", "100000"],
])
def test_a_huge_thread_count_is_refused_naming_the_bound(capsys, ckpt, command):
    """It used to hang: torch and the runtimes start one OS thread per count."""
    code, _, err = run_cli(capsys, *[c.format(ckpt=ckpt) for c in command])
    line = one_line(err)
    assert code == 2 and line.startswith("ConfigError:") and "threads=100000 must be in [1, 1024]" in line


def test_quantize_threads_0_is_refused_before_any_work(capsys, ckpt, tmp_path):
    code, _, err = run_cli(capsys, "quantize", ckpt, "--threads", "0", "--out", tmp_path / "q")
    assert code == 2 and one_line(err) == "ConfigError: threads=0 must be an integer >= 1"
    assert not list(tmp_path.glob("q*"))  # refused before quantizing, not after


# -- 3: batch sizes --------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["bench", "{ckpt}", "--batch-size", "1000000000", "--runs", "2"],
    ["train", "--model", "simple_cnn", "--data", "digits", "--epochs", "1", "--batch-size", "1000000000"],
])
def test_an_absurd_batch_size_is_one_line(capsys, ckpt, command):
    code, _, err = run_cli(capsys, *[c.format(ckpt=ckpt) for c in command])
    line = one_line(err)
    assert code == 2 and line.startswith("ConfigError:") and "batch_size=1000000000 must be in [1, 1048576]" in line


def test_a_batch_that_does_not_fit_in_memory_is_one_line(capsys, ckpt, monkeypatch):
    import edgeopt._oom as oom

    monkeypatch.setattr(oom, "physical_memory", lambda: 2**20)  # a 1 MiB machine
    code, _, err = run_cli(capsys, "bench", ckpt, "--batch-size", "8192", "--runs", "2")  # 2 MiB of digits
    line = one_line(err)
    assert code == 2 and line == ("ConfigError: timing torch: batch_size=8192 needs 2.0 MiB for its input "
                                  "alone, more than this machine's 1.0 MiB of memory; lower --batch-size")


# -- 4: bench --compare ----------------------------------------------------------------------
def test_bench_compare_refuses_nan_weights_naming_the_tensor(capsys, nan_ckpt):
    code, _, err = run_cli(capsys, "bench", nan_ckpt, "--compare", "--to", "torchscript", "--runs", "2")
    assert code == 2 and one_line(err).startswith(
        "NumericalError: cannot compare runtimes: tensor 'features.0.0.weight' [32, 1, 3, 3] holds 1 NaN")


def test_bench_compare_exits_2_when_no_format_succeeded(capsys, ckpt, monkeypatch):
    from edgeopt.errors import ExportMismatchError
    from edgeopt.export import parity

    def mismatch(*args, **kwargs):
        raise ExportMismatchError("torchscript outputs differ from PyTorch (max abs diff 3.1)")

    monkeypatch.setattr(parity, "verify_parity", mismatch)
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, "bench", ckpt, "--compare", "--to", "torchscript", "--runs", "2",
                             "--warmup", "0", "--batch-size", "4")
    assert "torchscript (failed)" in out  # the table is still printed, first
    line = one_line(err)
    assert code == 2 and line.startswith("ExportMismatchError: no format exported, ran here and matched "
                                         f"torch eager for {ckpt}: torchscript: failed (ExportMismatchError")


# -- 5: export with NaN weights ----------------------------------------------------------------
def test_export_with_nan_weights_is_a_numerical_error(capsys, nan_ckpt):
    code, _, err = run_cli(capsys, "export", nan_ckpt, "--to", "onnx")
    assert code == 2 and one_line(err).startswith(
        "NumericalError: cannot export to onnx: tensor 'features.0.0.weight' [32, 1, 3, 3] holds 1 NaN")
    assert not nan_ckpt.with_suffix(".onnx").exists()


# -- 6: quantize --max-drop -1 -----------------------------------------------------------------
def test_negative_max_drop_is_a_config_error(capsys, ckpt):
    code, _, err = run_cli(capsys, "quantize", ckpt, "--max-drop", "-1")
    assert code == 2 and one_line(err).startswith("ConfigError: QuantConfig.max_drop=-1.0 must be in [0, 100]")


# -- 7: --resume with fewer epochs than already run --------------------------------------------
def test_resume_with_fewer_epochs_leaves_the_finished_run_untouched(capsys, tmp_path):
    run = tmp_path / "run"
    base = ["train", "--model", "simple_cnn", "--data", "digits", "--out-dir", run,
            "--max-steps-per-epoch", "2", "--no-progress"]
    assert run_cli(capsys, *base, "--epochs", "2")[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, _, err = run_cli(capsys, *base, "--epochs", "1", "--resume")
    assert code == 2 and one_line(err) == (
        f"ConfigError: cannot resume {run} with epochs=1: that run has run 2 epoch(s); resume with "
        f"--epochs 2 or more to continue it, or train into another --out-dir (nothing was changed)")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# -- 8: one class --------------------------------------------------------------------------------
def _tree(root, counts: dict[tuple[str, str], int], grey_first: bool = False):
    g = torch.Generator().manual_seed(0)
    for (split, cls), n in counts.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = (torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(px).save(root / split / cls / f"{i:02d}.png")
    if grey_first:
        Image.new("L", (8, 8), 128).save(root / "train" / min(c for _, c in counts) / "000.png")
    return root


def test_training_on_one_class_is_refused(capsys, tmp_path):
    root = _tree(tmp_path / "one", {("train", "cat"): 8, ("test", "cat"): 2})
    code, _, err = run_cli(capsys, "train", "--model", "simple_cnn", "--data", f"imagefolder:{root}",
                           "--epochs", "1", "--no-progress")
    assert code == 2 and one_line(err).startswith(
        f"DataError: dataset 'imagefolder:{root}' has 1 class (cat): a classifier needs at least 2")


def test_evaluating_on_a_one_class_split_warns_in_one_line(capsys, tmp_path):
    from edgeopt.data import get_dataset

    root = _tree(tmp_path / "two", {("train", "a"): 8, ("train", "b"): 8, ("test", "a"): 4})
    (root / "test" / "b").mkdir()
    dm = get_dataset(f"imagefolder:{root}")
    ckpt = save_checkpoint(tmp_path / "m", create_model("simple_cnn", dm.spec))
    code, _, err = run_cli(capsys, "eval", ckpt, "--data", f"imagefolder:{root}", "--no-memory", "--runs", "2")
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and warnings == [
        ("warning: accuracy on split 'test' measures nothing: all 4 images are of one class ('a'); "
         "evaluate on data with at least two classes")]


# -- 9: a malicious train_state.pt ---------------------------------------------------------------
def test_a_malicious_train_state_is_refused_without_torchs_advice(capsys, tmp_path):
    from edgeopt.train.state import STATE_VERSION

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"version": STATE_VERSION, "epoch": 1, "x": Evil()}, run / "train_state.pt")
    code, _, err = run_cli(capsys, "train", "--model", "simple_cnn", "--data", "digits", "--epochs", "2",
                           "--out-dir", run, "--resume", "--no-progress")
    line = one_line(err)
    assert code == 2 and line.startswith(f"ModelLoadError: refused to load {run / 'train_state.pt'} for "
                                         f"safety: it is not a plain weights file")
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line
    assert not (tmp_path / "pwned").exists()


# -- 10: one grey image in a colour folder, through the CLI ------------------------------------
def test_a_grey_image_in_a_colour_folder_is_converted_with_one_warning_line(capsys, tmp_path):
    root = _tree(tmp_path / "mixed", {("train", "a"): 4, ("train", "b"): 4, ("test", "a"): 2,
                                      ("test", "b"): 2}, grey_first=True)
    code, _, err = run_cli(capsys, "train", "--model", "simple_cnn", "--data", f"imagefolder:{root}",
                           "--epochs", "1", "--max-steps-per-epoch", "1", "--no-progress", "--json")
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and warnings == [
        f"warning: 1 of 13 images of {root} are grey and were converted to RGB, the mode of the majority"]
