"""Tiny shared fixtures. Tests mirror the package layout (tests/<subpackage>/)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# shared helpers (tests/_cli.py) import as top-level modules under --import-mode=importlib
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tests are run on 2-core machines beside other work: keep torch to one thread by
# default so that timing-insensitive tests do not fight over cores.
torch.set_num_threads(int(os.environ.get("EDGEOPT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _forget_model_code_trust():
    """A CLI call with --trust-model-code allows code for the whole process: forget it after
    each test so that no test passes because an earlier one trusted something."""
    yield
    from edgeopt.models.trust import reset_model_code_trust

    reset_model_code_trust()


@pytest.fixture(scope="session")
def synthetic_data():
    """A small deterministic 3x16x16, 10-class dataset (no files needed)."""
    from edgeopt.data import get_dataset

    return get_dataset("synthetic")


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn's real 8x8 digits (1,797 images, shipped with the package)."""
    from edgeopt.data import get_dataset

    return get_dataset("digits")


@pytest.fixture
def tiny_spec():
    from edgeopt.spec import ModelSpec

    return ModelSpec((3, 16, 16), 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), dataset="synthetic")


@pytest.fixture(scope="session")
def digits_cnn(digits_data):
    """simple_cnn trained 8 epochs on real digits, once per session, in eval mode.

    Its float accuracy on the digits test split (359 images) is >= 0.95 (measured 0.983);
    quantization tests compare their int8 artifacts against it.
    """
    from edgeopt.models import create_model
    from edgeopt.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = create_model("simple_cnn", digits_data.spec)
    Trainer(TrainConfig(epochs=8, lr=0.05, progress=False, out_dir=None)).fit(model, digits_data)
    model.eval()
    x, y = digits_data.samples(10_000, split="test")
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).double().mean())
    assert len(y) == 359 and acc >= 0.95, acc
    return model
