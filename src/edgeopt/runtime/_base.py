"""The Runner protocol, the RUNNERS registry and input checks shared by every runtime."""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgeopt.errors import ArtifactError, ConfigError
from edgeopt.registry import Registry

#: name -> Runner class. A Runner class has ``name``, ``formats`` (the artifact formats
#: it runs; ``"module"`` for an in-memory nn.Module), a static ``version() -> str | None``
#: and a constructor ``(target, threads, **options)``.
RUNNERS: Registry = Registry("runtime")

DEFAULT_THREADS = 1  # explicit and reproducible: latency numbers compare across runtimes


@runtime_checkable
class Runner(Protocol):
    """Runs one model or artifact on numpy batches; the same API for every runtime.

    Attributes:
        name: the runtime, e.g. ``"torch"``, ``"onnxruntime"``.
        threads: intra-op threads used by ``predict``.
        input_shape: ``(C, H, W)`` of one input image.
        output_shape: ``(num_classes,)`` of one output row.
    """

    name: str
    threads: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW normalised images ``[N, C, H, W]`` -> float32 logits ``[N, classes]``."""
        ...


def bind_target(runner: Any, artifact: Any, spec: Any, threads: Any) -> None:
    """Set the attributes every Runner has: artifact, spec, threads, input and output shape.

    Example:
        >>> from types import SimpleNamespace
        >>> from edgeopt.spec import ModelSpec
        >>> r = SimpleNamespace()
        >>> bind_target(r, None, ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)), 2)
        >>> r.threads, r.input_shape, r.output_shape
        (2, (1, 8, 8), (10,))
    """
    runner.artifact = artifact
    runner.spec = spec
    runner.threads = check_threads(threads)
    runner.input_shape = tuple(spec.input_shape)  # (C, H, W) of one image
    runner.output_shape = (spec.num_classes,)


class TorchVersionMixin:
    """``version()`` and ``set_threads()`` of the runners that run inside PyTorch
    (torch, torchscript, torch_export): one torch, one intra-op thread setting."""

    threads: int

    @staticmethod
    def version() -> str | None:
        import torch

        return str(torch.__version__)

    def set_threads(self, threads: int) -> None:
        """Change the intra-op thread count used by later ``predict`` calls."""
        self.threads = check_threads(threads)


def check_threads(threads: Any) -> int:
    """``threads`` as an int in ``[1, MAX_THREADS]`` (None -> :data:`DEFAULT_THREADS`); else ConfigError.

    Example:
        >>> check_threads(None), check_threads(4)
        (1, 4)
    """
    from edgeopt.config import MAX_THREADS

    if threads is None:
        return DEFAULT_THREADS
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError(f"threads={threads!r} must be an integer >= 1")
    if threads > MAX_THREADS:  # one OS thread each: a typo like 100000 hung the process
        raise ConfigError(f"threads={threads!r} must be in [1, {MAX_THREADS}] "
                          f"(threads per process; this machine has {os.cpu_count()} CPUs)")
    return int(threads)


def check_batch(batch: Any, input_shape: tuple[int, ...], where: str) -> np.ndarray:
    """Validate a batch against ``(C, H, W)`` and return it as C-contiguous float32.

    Raises:
        ArtifactError: not a 4-D float array of the expected (C, H, W) (the message says
            expected vs got). Integer (e.g. uint8) input is refused: models take
            normalised floats, and silently casting raw pixels would give wrong answers.
    """
    if hasattr(batch, "detach") and hasattr(batch, "cpu"):  # a torch tensor
        batch = batch.detach().cpu().numpy()
    arr = np.asarray(batch)
    expected = (-1, *input_shape)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(input_shape):
        raise ArtifactError(
            f"{where} expects input of shape [N, {', '.join(map(str, input_shape))}] "
            f"(float32 NCHW), got {list(arr.shape)}"
        )
    if arr.shape[0] < 1:
        raise ArtifactError(f"{where} got an empty batch (shape {list(arr.shape)}); expected {list(expected)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ArtifactError(
            f"{where} expects normalised float32 images, got dtype {arr.dtype}; "
            f"normalise them with the dataset's mean/std first (DataModule.normalize)"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)
