"""Latency: fields are consistent and settings are recorded. No timing thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.evaluate import LatencyConfig, measure_latency, measure_throughput


class CountingRunner:
    name = "counting"
    threads = 1

    def __init__(self):
        self.shapes = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append((x.shape, str(x.dtype), x.flags["C_CONTIGUOUS"]))
        return np.zeros((len(x), 10), np.float32)


def test_percentiles_ordered_and_settings_recorded(spec16):
    runner = CountingRunner()
    r = measure_latency(runner, spec16)
    assert r.runs == 100 and r.warmup == 10 and r.batch_size == 1
    assert r.threads == 1 and r.runtime == "counting"
    assert r.max_ms >= r.p99_ms >= r.p90_ms >= r.median_ms >= r.min_ms > 0
    assert r.std_ms >= 0 and r.min_ms <= r.mean_ms <= r.max_ms
    assert r.throughput == pytest.approx(1000.0 / r.median_ms)
    # warm-up + timed calls, all on one fixed float32 NCHW contiguous batch
    assert len(runner.shapes) == 110
    assert set(runner.shapes) == {((1, 3, 16, 16), "float32", True)}


def test_throughput_uses_the_batch(spec16):
    runner = CountingRunner()
    r = measure_throughput(runner, spec16, batch_size=8, warmup=2, runs=5)
    assert r.batch_size == 8 and r.runs == 5 and len(runner.shapes) == 7
    assert r.throughput == pytest.approx(8 * 1000.0 / r.median_ms)


def test_torch_threads_set_for_the_measurement_and_restored(tiny_net, spec16, module_runner):
    before = torch.get_num_threads()
    seen = []

    class Spy(module_runner):
        def predict(self, x):
            seen.append(torch.get_num_threads())
            return super().predict(x)

    r = measure_latency(Spy(tiny_net), spec16, runs=3, warmup=1, threads=2)
    assert r.threads == 2 and set(seen) == {2} and r.runtime == "torch"
    assert torch.get_num_threads() == before


def test_bare_module_is_timed_in_eager_mode(tiny_net, spec16):
    r = measure_latency(tiny_net, spec16, runs=3, warmup=0, threads=1)
    assert r.runtime == "torch" and r.runs == 3 and r.threads == 1


def test_fixed_thread_runtime_refuses_another_count(spec16):
    runner = CountingRunner()  # like an onnxruntime session: threads fixed when built
    with pytest.raises(ConfigError, match="threads=2"):
        measure_latency(runner, spec16, runs=1, threads=2)


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"warmup": -1}, {"batch_size": 0}, {"threads": 0}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        LatencyConfig(**kwargs)


def test_thread_and_batch_bounds(spec16):
    with pytest.raises(ConfigError, match=r"threads=100000 must be in \[1, 1024\]"):
        LatencyConfig(threads=100_000)
    with pytest.raises(ConfigError, match=r"batch_size=1000000000 must be in \[1, 1048576\]"):
        measure_latency(CountingRunner(), spec16, batch_size=10**9)


def test_a_batch_larger_than_memory_is_refused_before_allocating(spec16, monkeypatch):
    import edgeopt._oom as oom

    monkeypatch.setattr(oom, "physical_memory", lambda: 2**30)  # a 1 GiB machine
    runner = CountingRunner()
    # 2**20 images of 3x16x16 float32 = 3 GiB
    with pytest.raises(ConfigError, match=r"^timing counting: batch_size=1048576 needs 3.0 GiB for its "
                                          r"input alone, more than this machine's 1.0 GiB of memory; "
                                          r"lower --batch-size$"):
        measure_latency(runner, spec16, batch_size=2**20)
    assert runner.shapes == []  # nothing was run


def test_out_of_memory_while_running_is_one_line(spec16):
    class Hungry(CountingRunner):
        def predict(self, x):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                               "25769803776 bytes. Error code 12 (Cannot allocate memory)")

    with pytest.raises(ConfigError, match=r"^timing counting: batch_size=64 does not fit in memory "
                                          r"\(RuntimeError: DefaultCPUAllocator.*\); lower --batch-size$"):
        measure_throughput(Hungry(), spec16, batch_size=64, runs=2)

    class Broken(CountingRunner):
        def predict(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through
        measure_throughput(Broken(), spec16, batch_size=64, runs=2)
