"""Peak memory is measured in a child process; assert structure, not sizes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.errors import ArtifactError
from edgeopt.evaluate import measure_peak_memory
from edgeopt.spec import ModelSpec


def _spec():
    return ModelSpec((3, 32, 32), 10, (0.0,) * 3, (1.0,) * 3)


def test_peak_in_a_child_process(tmp_path, gemm_onnx):
    # 10 x 3072 fp32 weights = 120 KiB: small; we check the readings' structure only.
    w = np.random.default_rng(0).standard_normal((10, 3 * 32 * 32)).astype(np.float32)
    path = gemm_onnx(tmp_path / "m.onnx", w, np.zeros(10), input_shape=(3, 32, 32))
    r = measure_peak_memory(path, "onnxruntime", batch_size=2, runs=3, spec=_spec())
    assert r.peak_rss_mb >= r.after_load_mb >= r.baseline_mb > 0
    assert r.delta_mb == pytest.approx(r.peak_rss_mb - r.baseline_mb, abs=1e-2)
    assert r.runtime == "onnxruntime" and r.batch_size == 2 and r.runs == 3 and r.threads == 1
    assert "child process" in r.method


def test_child_failure_reports_its_last_stderr_line(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx file")
    with pytest.raises(ArtifactError) as err:
        measure_peak_memory(bad, "onnxruntime", spec=_spec())
    msg = str(err.value)
    assert "memory probe" in msg and "exit status" in msg and "\n" not in msg
    assert msg.rstrip().split("): ", 1)[1]  # the child's own error line follows


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        measure_peak_memory(tmp_path / "nope.onnx", "onnxruntime")


def test_module_without_arch_is_refused(tiny_net):
    from edgeopt.errors import ConfigError

    with pytest.raises(ConfigError, match="edgeopt_arch"):
        measure_peak_memory(tiny_net, "torch")
