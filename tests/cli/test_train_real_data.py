"""Real-data accuracy through the command line (marked slow: minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeopt.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="needs the Debian package dataset-fashion-mnist (installed by .ci/run)")
def test_simple_cnn_reaches_88_percent_on_fashion_mnist_in_2_epochs(tmp_path, capsys):
    code = main(["train", "--model", "simple_cnn", "--data", "fashion-mnist", "--epochs", "2",
                 "--threads", "2", "--no-progress", "--out-dir", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["epochs_run"] == 2
    assert summary["test_acc"] >= 0.88, summary["metrics"]
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "last.json").is_file()
