"""End-to-end runs: real-data accuracy, SIGKILL + resume, and 2-process DDP with torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgeopt.train import TrainConfig, load_train_state, run_training

PY = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_digits_simple_cnn_reaches_90_percent_test_accuracy(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=128, lr=0.05, progress=False, threads=1,
                      out_dir=str(tmp_path))
    res = run_training("simple_cnn", "digits", cfg)
    assert res.metrics["test_acc"] >= 0.90
    assert res.history[-1]["train_loss"] < 0.5 * res.history[0]["train_loss"]


def _load_all(out: Path) -> None:
    """Every checkpoint file in ``out`` loads (safetensors+sidecar, and the train state)."""
    from edgeopt.models import load_checkpoint

    assert load_train_state(out) is not None
    for name in ("last", "best"):
        if (out / f"{name}.json").exists():
            load_checkpoint(out / f"{name}.safetensors")


def test_sigkill_mid_epoch_then_resume_finishes_the_planned_epochs(tmp_path):
    out = tmp_path / "run"
    # digits: ~1,300 train images / batch 4 = ~324 steps per epoch (a few seconds), with a
    # train_state.pt every 10 steps.
    cmd = [PY, "-m", "edgeopt.train", "--model", "simple_cnn", "--data", "digits",
           "--epochs", "2", "--batch-size", "4", "--lr", "0.02", "--threads", "1",
           "--checkpoint-every-steps", "10", "--no-progress", "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = None
    deadline = time.time() + 90
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "train_state.pt").exists():
                state = load_train_state(out)
                if state["step_in_epoch"] >= 30:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert state is not None and state["step_in_epoch"] > 0 and not state["finished"]

    # Only hidden temporaries of an interrupted atomic write may remain; every real file loads.
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert not [n for n in visible if n.endswith(".tmp")]
    _load_all(out)
    killed = load_train_state(out)
    assert killed["step_in_epoch"] > 0 or killed["epoch"] == 1  # mid-epoch or at epoch 1's end

    r = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    _load_all(out)
    final = load_train_state(out)
    from edgeopt.data import get_dataset

    steps = len(get_dataset("digits").loader("train", 4))
    assert (final["epoch"], final["step_in_epoch"], final["global_step"]) == (2, 0, 2 * steps)
    sidecar = json.loads((out / "last.json").read_text())
    assert [h["epoch"] for h in sidecar["history"]] == [1, 2]


def test_torchrun_two_processes_gloo_writes_one_checkpoint(tmp_path):
    from edgeopt.data import get_dataset
    from edgeopt.models import load_checkpoint

    out = tmp_path / "ddp"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "edgeopt.train",
           "--model", "simple_cnn", "--data", "digits", "--epochs", "1", "--batch-size", "64",
           "--lr", "0.05", "--threads", "1", "--device", "cpu", "--no-progress",
           "--out-dir", str(out)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["best.json", "best.safetensors", "last.json", "last.safetensors",
                     "train_state.pt"]
    assert len([ln for ln in r.stdout.splitlines() if ln.startswith("{")]) == 1  # rank 0 only
    _, side = load_checkpoint(out / "last.safetensors")
    assert len(side["history"]) == 1 and side["history"][0]["val_acc"] is not None
    # Each rank trained on half the data: half the steps of one process.
    data = get_dataset("digits")
    per_rank = len(data.loader("train", 64, rank=0, world_size=2))
    assert load_train_state(out)["global_step"] == per_rank < len(data.loader("train", 64))
