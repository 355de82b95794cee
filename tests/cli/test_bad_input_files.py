"""Bad output paths, full or read-only disks, Ctrl-C and two runs into one folder: each is
one line on stderr (exit 2, or 130 for Ctrl-C), and nothing partial is left or overwritten."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cli import one_line, run_cli

EDGEOPT = [sys.executable, "-m", "edgeopt"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TRAIN = ["train", "--model", "simple_cnn", "--data", "digits", "--batch-size", "8", "--no-progress"]






def _default_sigint() -> None:
    """preexec_fn of a child that must see Ctrl-C: a shell starts background jobs (``make
    test &``, CI steps) with SIGINT ignored, the child would inherit that, and Python then
    installs no KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An (untrained) simple_cnn checkpoint for digits, in its own folder."""
    from edgeopt.data import get_dataset
    from edgeopt.models import create_model, save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(d / "m", create_model("simple_cnn", get_dataset("digits").spec))


@pytest.fixture
def work(tmp_path):
    """A folder holding one plain file, ``some_file``, that outputs must not go under."""
    (tmp_path / "some_file").write_text("keep me")
    return tmp_path


# -- case 1: an output path that is a file, or under one ---------------------------------------
def _commands(ckpt: Path, f: Path) -> dict[str, list[str]]:
    return {
        "train": [*TRAIN, "--epochs", "1", "--max-steps-per-epoch", "2", "--out-dir", str(f / "x")],
        "export": ["export", str(ckpt), "--to", "onnx", "--out", str(f / "y.onnx")],
        "quantize": ["quantize", str(ckpt), "--out", str(f / "y.onnx"), "--no-eval"],
        "scan": ["scan", str(ckpt), "--out-dir", str(f / "x"), "--samples", "16"],
        "scan-file": ["scan", str(ckpt), "--out-dir", str(f), "--samples", "16"],
        "demo": ["demo", "--out-dir", str(f / "x"), "--epochs", "1"],
        "bench": ["bench", str(ckpt), "--compare", "--to", "onnx", "--runs", "2", "--out-dir", str(f / "x")],
        "prune": ["prune", str(ckpt), "--out", str(f / "y.safetensors"), "--no-eval"],
        "scan-prune": ["scan", str(ckpt), "--prune", "--out-dir", str(f / "x"), "--samples", "16"],
    }


@pytest.mark.parametrize("name", ["train", "export", "quantize", "scan", "scan-file", "demo", "bench", "prune",
                                  "scan-prune"])
def test_output_under_a_file_fails_at_once_in_one_line(capsys, monkeypatch, ckpt, work, name):
    import edgeopt.models
    from edgeopt.pipeline import DataConfig
    from edgeopt.train import Trainer

    def no_work(*a, **k):
        raise AssertionError("work started before the output path was checked")

    # The check comes before any work: no training step, and (but for train and export,
    # whose checks sit in the Trainer and the exporter) no checkpoint or data read.
    monkeypatch.setattr(Trainer, "_fit", no_work)
    if name not in ("train", "export"):
        monkeypatch.setattr(edgeopt.models, "load_checkpoint", no_work)
        monkeypatch.setattr(DataConfig, "load", no_work)
    before = tree(work)
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, *_commands(ckpt, work / "some_file")[name])
    line = one_line(err)
    assert code == 2
    assert line.startswith("ConfigError:") and "some_file is a file, not a folder" in line, line
    assert tree(work) == before  # nothing created, the file untouched
    assert time.perf_counter() - t0 < 30


# -- case 2: a full disk / a read-only file system while writing ---------------------------------
def test_full_disk_during_export_is_one_line_and_keeps_the_old_artifact(capsys, monkeypatch, ckpt, work):
    import onnx

    out = work / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"the old artifact")

    def full(proto, path, *a, **k):
        Path(path).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx, "save_model", full)
    code, _, err = run_cli(capsys, "export", str(ckpt), "--to", "onnx", "--out", str(out / "m.onnx"), "--no-verify")
    line = one_line(err)
    assert code == 2 and line.startswith("OutputError:") and "no space left on device" in line, line
    assert tree(out) == {"m.onnx": b"the old artifact"}  # no temporary, no partial file, no sidecar


def test_full_disk_during_training_is_one_line_and_leaves_no_partial_state(capsys, monkeypatch, work):
    import torch

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"half a state")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = work / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--max-steps-per-epoch", "2", "--out-dir", str(out))
    line = one_line(err)
    assert code == 2 and line.startswith("OutputError:") and "train_state.pt" in line, line
    names = set(tree(out))
    assert "train_state.pt" not in names and not [n for n in names if n.endswith(".tmp")]
    assert ".edgeopt.lock" not in names  # the folder is free again


def test_read_only_file_system_during_quantize_is_one_line(capsys, monkeypatch, ckpt, work):
    real_open = os.open

    q = work / "q"
    q.mkdir()

    def ro_open(path, flags, *a, **k):
        if Path(path).parent == q and str(path).endswith(".tmp"):  # q's file system is read-only
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    code, _, err = run_cli(capsys, "quantize", str(ckpt), "--out", str(q / "m.onnx"), "--no-eval",
                           "--no-histograms", "--calibration-samples", "32", "--json")
    line = one_line(err)
    assert code == 2 and line.startswith("OutputError:") and "read-only file system" in line, line
    assert tree(q) == {}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a chmod'ed folder anyway")
def test_read_only_folder_is_one_line_before_any_work(capsys, ckpt, work):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "export", str(ckpt), "--to", "onnx", "--out", str(ro / "m.onnx"))
        line = one_line(err)
        assert code == 2 and line.startswith("ConfigError:") and "not writable" in line, line
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# -- case 3: temporaries of a killed or failing quantize -----------------------------------------
def test_quantize_removes_a_killed_runs_temporary_and_its_own_on_failure(capsys, monkeypatch, ckpt, work):
    import onnxruntime.quantization as ortq

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a writer that was killed: its pid is gone
    q = work / "q"
    q.mkdir()
    leftover = q / f".m.onnx.p{p.pid}-0a1b2c3d.tmp"
    leftover.write_bytes(b"")

    def failing(model_input, model_output, *a, **k):
        Path(model_output).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ortq, "quantize_static", failing)
    args = ["quantize", str(ckpt), "--out", str(q / "m.onnx"), "--no-eval", "--no-histograms",
            "--calibration-samples", "32", "--json"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and one_line(err).startswith("OutputError:")
    assert tree(q) == {}  # the stale temporary and the failed run's own are both gone

    monkeypatch.undo()
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert sorted(tree(q)) == ["m.onnx", "m.onnx.edgeopt.json"]
    assert os.stat(q / "m.onnx").st_mode & 0o777 == 0o666 & ~_umask()  # case 4: not 0600


def _umask() -> int:
    from edgeopt._io import current_umask

    return current_umask()


# -- case 5: Ctrl-C ----------------------------------------------------------------------------
def test_ctrl_c_during_train_says_what_was_kept_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    cmd = [*EDGEOPT, *TRAIN, "--epochs", "200", "--max-steps-per-epoch", "20", "--threads", "1",
           "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (out / "last.json").exists():
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epoch
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    line = one_line(err)
    assert line.startswith(f"interrupted: finished steps are kept in {out}") and "re-run with --resume" in line, line
    assert not (out / ".edgeopt.lock").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    from edgeopt.train import load_train_state

    done = load_train_state(out)["epoch"]  # finished epochs
    assert 1 <= done < 200
    r = subprocess.run([*cmd[:cmd.index("200")], str(done + 1), *cmd[cmd.index("200") + 1:], "--resume", "--json"],
                       env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [h["epoch"] for h in json.loads(r.stdout)["history"]] == list(range(1, done + 2))


def test_ctrl_c_says_the_truth_for_each_command(capsys, monkeypatch, tmp_path):
    """typer turns Ctrl-C into a silent exit 130; main() still prints what was kept."""
    import edgeopt.pipeline
    import edgeopt.quantize.jobs
    from edgeopt.train import Trainer

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgeopt.quantize.jobs, "quantize_checkpoint", interrupt)
    code, _, err = run_cli(capsys, "quantize", "x.safetensors")
    assert code == 130 and one_line(err).startswith("interrupted: nothing partial was written")

    monkeypatch.setattr(Trainer, "_fit", interrupt)
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1")
    assert code == 130 and one_line(err) == (
        "interrupted: nothing was saved (no out_dir); give --out-dir to be able to resume")
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--out-dir", str(tmp_path / "t"))
    assert code == 130 and one_line(err).startswith("interrupted before the first checkpoint")
    assert not (tmp_path / "t" / ".edgeopt.lock").exists()

    import edgeopt.recipe.runner

    monkeypatch.setattr(edgeopt.recipe.runner._Run, "baseline", interrupt)
    code, _, err = run_cli(capsys, "demo", "--out-dir", str(tmp_path / "d"))
    line = one_line(err)
    assert code == 130 and "--resume" not in line and "re-run the same command" in line, line


# -- case 6: two runs into one folder ------------------------------------------------------------
def _hold(out: Path) -> subprocess.Popen:
    """A live process that holds ``out``'s lock (as a running edgeopt would)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    out.mkdir(parents=True, exist_ok=True)
    (out / ".edgeopt.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                   "started": "now"}))
    return sleeper


@pytest.mark.parametrize("command", ["train", "demo"])
def test_second_run_into_a_busy_folder_is_one_line_and_overwrites_nothing(capsys, tmp_path, command):
    out = tmp_path / "run"
    sleeper = _hold(out)
    try:
        (out / "best.safetensors").write_bytes(b"the other run's best")
        before = tree(out)
        args = ([*TRAIN, "--epochs", "1", "--max-steps-per-epoch", "2"] if command == "train"
                else ["demo", "--epochs", "1"])
        code, _, err = run_cli(capsys, *args, "--out-dir", str(out))
        line = one_line(err)
        assert code == 2 and line.startswith("ConfigError:"), line
        assert f"pid {sleeper.pid}" in line and str(out) in line, line
        assert tree(out) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_killed_runs_lock_is_taken_over(capsys, tmp_path):
    out = tmp_path / "run"
    sleeper = _hold(out)
    sleeper.kill()
    sleeper.wait()
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--max-steps-per-epoch", "2", "--out-dir", str(out))
    assert code == 0, err
    assert (out / "best.safetensors").exists() and not (out / ".edgeopt.lock").exists()


def test_two_live_trainings_into_one_folder(capsys, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgeopt.train", "--model", "simple_cnn", "--data", "digits",
           "--epochs", "200", "--max-steps-per-epoch", "20", "--threads", "1", "--no-progress",
           "--out-dir", str(out)]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (out / "last.json").exists():
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-2000:]
        code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--out-dir", str(out))
        line = one_line(err)
        assert code == 2 and f"pid {first.pid}" in line and "in use by another edgeopt run" in line, line
        first.send_signal(signal.SIGINT)  # python -m edgeopt.train says what it kept, too
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130 and "re-run with --resume" in one_line(err), err[-2000:]
