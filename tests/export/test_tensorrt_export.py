"""TensorRT export without TensorRT or a GPU: one clear MissingDependencyError.

The GPU path (engine build and the runner) is not tested here: the development machine
has neither the tensorrt package nor a CUDA GPU.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from edgeopt.errors import ConfigError, MissingDependencyError
from edgeopt.export import TensorRTExportConfig, export_model
from edgeopt.export.tensorrt_export import tensorrt_available

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
pytestmark = pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are present: the missing path cannot be shown")


def test_tensorrt_export_names_what_is_missing(tiny_model, tmp_path):
    with pytest.raises(MissingDependencyError) as info:
        export_model(tiny_model, "tensorrt", tmp_path / "m.engine")
    msg = str(info.value)
    assert msg.startswith("TensorRT export needs")
    if importlib.util.find_spec("tensorrt") is None:
        assert 'pip install "edgeopt[tensorrt]"' in msg
    if not torch.cuda.is_available():
        assert "a CUDA GPU" in msg
    assert not any(tmp_path.iterdir())  # nothing half-written
    assert tensorrt_available() == msg


def test_tensorrt_runner_names_what_is_missing(tiny_model, tmp_path):
    from edgeopt.artifact import Artifact
    from edgeopt.runtime import get_runner

    path = tmp_path / "m.engine"
    path.write_bytes(b"not an engine")
    art = Artifact(path, "tensorrt", tiny_model.edgeopt_spec)
    art.save_sidecar()
    with pytest.raises(MissingDependencyError, match="the TensorRT runtime needs"):
        get_runner(path)


def test_tensorrt_config_errors():
    with pytest.raises(ConfigError, match="opt_batch"):
        TensorRTExportConfig(opt_batch=64, max_batch=32)
    with pytest.raises(ConfigError, match="precision"):
        TensorRTExportConfig(precision="int8")
