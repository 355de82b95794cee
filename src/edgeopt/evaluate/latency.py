"""Latency and throughput of a Runner: warm-up, many timed runs, percentiles.

How it is measured (docs: "Measurement rules"):

* One fixed input is built before timing (``spec.example_input(batch, seed)`` as a
  contiguous float32 numpy array), so input creation and conversion are never timed.
* ``warmup`` untimed calls first (lazy initialisation, allocator and cache warm-up), then
  ``runs`` calls each timed with ``time.perf_counter_ns`` around ``runner.predict`` only.
* The thread count is set explicitly and recorded; for the torch runtime
  ``torch.set_num_threads`` is set for the measurement and restored afterwards.
* Reported: median, p90, p99, mean, std and min in milliseconds, and throughput in
  images per second (``batch_size / median``). Timings are never pass/fail in tests.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgeopt.config import Config
from edgeopt.errors import ConfigError

#: Timed runs by default: with fewer than 100 the p99 is just the maximum of a handful.
DEFAULT_RUNS = 100


@dataclasses.dataclass(frozen=True)
class LatencyConfig(Config):
    """How to time a Runner.

    Example:
        >>> LatencyConfig(runs=200).runs
        200
    """

    batch_size: int = 1
    warmup: int = 10
    runs: int = DEFAULT_RUNS
    threads: int | None = None  # None: the runner's own thread count
    seed: int = 0

    def validate(self) -> None:
        self._check_batch_size("batch_size")
        self._check_range("warmup", 0, None)
        self._check_range("runs", 1, None)
        self._check_threads("threads")


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    """Timings of ``runs`` calls of ``predict`` on one fixed batch (milliseconds).

    ``throughput`` is images per second at the median latency: ``batch_size * 1000 / median_ms``.
    """

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    batch_size: int
    threads: int | None
    runtime: str
    throughput: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _runner_name(runner: Any) -> str:
    return str(getattr(runner, "name", type(runner).__name__))


@contextmanager
def _threads_set(runner: Any, threads: int | None) -> Iterator[int | None]:
    """Run the block with ``threads`` intra-op threads; yields the count in effect.

    A runner with ``set_threads`` (the edgeopt runners) is switched for the block and
    switched back after (onnxruntime rebuilds its session: thread pools are fixed per
    session). For torch, ``torch.set_num_threads`` is also set for the block and restored,
    which covers bare modules. A runner that can neither switch nor is torch refuses a
    different count with an error that says how to build it, rather than recording a
    wrong thread count.
    """
    own = getattr(runner, "threads", None)
    wanted = threads if threads is not None else own
    is_torch = _runner_name(runner) == "torch" or _is_module(runner)
    switched = False
    if threads is not None and own is not None and int(own) != int(threads):
        setter = getattr(runner, "set_threads", None)
        if setter is not None:
            setter(int(threads))
            switched = True
        elif not is_torch:
            raise ConfigError(
                f"the {_runner_name(runner)} runner was built with threads={own}; build it with "
                f"get_runner(..., threads={threads}) to time it with {threads} thread(s)"
            )
    try:
        if is_torch:
            import torch

            before = torch.get_num_threads()
            if wanted is not None:
                torch.set_num_threads(int(wanted))
            try:
                yield torch.get_num_threads() if wanted is None else int(wanted)
            finally:
                torch.set_num_threads(before)
        else:
            yield None if wanted is None else int(wanted)
    finally:
        if switched:
            runner.set_threads(int(own))


def _is_module(obj: Any) -> bool:
    try:
        import torch

        return isinstance(obj, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


def _predict_fn(runner: Any):
    """``runner.predict``, or a no-grad eager call for a bare nn.Module."""
    if hasattr(runner, "predict"):
        return runner.predict
    if _is_module(runner):
        import torch

        runner.eval()

        def predict(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return runner(torch.from_numpy(x)).numpy()

        return predict
    raise ConfigError(f"cannot time a {type(runner).__name__}: it has no predict(batch) method")


def measure_latency(
    runner: Any,
    spec: Any,
    batch_size: int = 1,
    warmup: int = 10,
    runs: int = DEFAULT_RUNS,
    threads: int | None = None,
    seed: int = 0,
) -> LatencyResult:
    """Time ``runner.predict`` on one fixed batch: warm-up, then ``runs`` timed calls.

    Args:
        runner: an ``edgeopt.runtime`` Runner (``predict(np.ndarray) -> np.ndarray``,
            ``name``, ``threads``), or an eager ``nn.Module``.
        spec: the ModelSpec; gives the input shape (C, H, W).
        batch_size: images per call (1 for latency; larger for throughput).
        warmup: untimed calls before timing (>= 0).
        runs: timed calls (>= 1; 100 by default so p99 means something).
        threads: intra-op threads to time with; None keeps the runner's own.
        seed: seed of the fixed random input.

    Returns:
        A LatencyResult with percentiles in milliseconds and the settings used.

    Raises:
        ConfigError: a bad setting, or a thread count the runner cannot switch to.

    Example:
        >>> import numpy as np
        >>> from edgeopt.spec import ModelSpec
        >>> class Echo:
        ...     name, threads = "fake", 1
        ...     def predict(self, x):
        ...         return x.reshape(len(x), -1)[:, :2]
        >>> r = measure_latency(Echo(), ModelSpec((1, 4, 4), 2, (0.0,), (1.0,)), runs=5, warmup=1)
        >>> r.runs, r.batch_size, r.p99_ms >= r.median_ms >= r.min_ms
        (5, 1, True)
    """
    from edgeopt._oom import batch_memory, check_batch_fits

    cfg = LatencyConfig(batch_size=batch_size, warmup=warmup, runs=runs, threads=threads, seed=seed)
    what = f"timing {_runner_name(runner) if hasattr(runner, 'predict') else 'torch'}"
    check_batch_fits(cfg.batch_size, spec.input_shape, what)
    with batch_memory(what, cfg.batch_size):  # a batch too big for memory is one line
        # Built once, before timing: float32, C-contiguous, shape [batch, C, H, W].
        x = np.ascontiguousarray(spec.example_input(cfg.batch_size, seed=cfg.seed).numpy(), dtype=np.float32)
    predict = _predict_fn(runner)
    times_ns = np.empty(cfg.runs, dtype=np.int64)
    with _threads_set(runner, cfg.threads) as used_threads, batch_memory(what, cfg.batch_size):
        for _ in range(cfg.warmup):
            predict(x)
        clock = time.perf_counter_ns
        for i in range(cfg.runs):
            t0 = clock()
            predict(x)
            times_ns[i] = clock() - t0
    ms = times_ns.astype(np.float64) / 1e6
    median = float(np.median(ms))
    return LatencyResult(
        median_ms=median,
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        runs=cfg.runs,
        warmup=cfg.warmup,
        batch_size=cfg.batch_size,
        threads=None if used_threads is None else int(used_threads),
        runtime=_runner_name(runner) if hasattr(runner, "predict") else "torch",
        throughput=(cfg.batch_size * 1000.0 / median) if median > 0 else float("inf"),
    )


def measure_throughput(
    runner: Any,
    spec: Any,
    batch_size: int = 64,
    warmup: int = 3,
    runs: int = 30,
    threads: int | None = None,
    seed: int = 0,
) -> LatencyResult:
    """Images per second at a larger batch: :func:`measure_latency` with batch defaults.

    Fewer runs than latency by default (30): a batch call is long and its spread small;
    the ``throughput`` field is ``batch_size * 1000 / median_ms``.

    Args:
        runner: an ``edgeopt.runtime`` Runner or an ``nn.Module``.
        spec: the ModelSpec (input shape).
        batch_size: images per call.
        warmup: untimed calls first.
        runs: timed calls.
        threads: intra-op threads; None keeps the runner's own.
        seed: seed of the fixed input.

    Returns:
        A LatencyResult whose ``throughput`` is images/s.

    Example:
        >>> import numpy as np
        >>> from edgeopt.spec import ModelSpec
        >>> class Echo:
        ...     name, threads = "fake", 1
        ...     def predict(self, x):
        ...         return x.reshape(len(x), -1)[:, :2]
        >>> measure_throughput(Echo(), ModelSpec((1, 4, 4), 2, (0.0,), (1.0,)), batch_size=8, runs=3).batch_size
        8
    """
    return measure_latency(runner, spec, batch_size=batch_size, warmup=warmup, runs=runs, threads=threads, seed=seed)
