"""Heavy backend libraries that both exporters and runners need, imported on first use.

``export/`` checks every file it writes by running it (``runtime/``), so runtime must not
reach back into export's modules: what both sides need to load a backend quietly, or to say
in one line why it cannot, lives here, below both.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from edgeopt.errors import MissingDependencyError, require

#: The file inside a TorchScript / torch.export archive that holds the ModelSpec (JSON);
#: the exporter writes it, the runners read the input shape from it.
SPEC_EXTRA_FILE = "edgeopt_spec.json"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python and C++ output on stdout/stderr (file descriptors 1 and 2) for a block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved: list[int] = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append(os.dup(fd))
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:  # no real descriptors (an embedded interpreter): Python-level only
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
        saved = []
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if saved:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """Silence coremltools' import-time and conversion chatter; errors still raise.

    On import it logs (logger ``coremltools``, level WARNING) that its native library is
    missing (expected off macOS) and that this torch / scikit-learn version is untested;
    conversion shows progress bars on stderr. Real failures are exceptions.
    """
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with quiet():
                yield
    finally:
        log.setLevel(level)


def coremltools() -> Any:
    """Import coremltools quietly, or raise MissingDependencyError with the pip command."""
    with quiet_coremltools():
        return require("coremltools", "coreml", "Core ML export")


def tensorrt_missing() -> list[str]:
    """What this machine lacks for TensorRT: the package, a CUDA GPU, or nothing."""
    import importlib.util

    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the 'tensorrt' extra: pip install \"edgeopt[tensorrt]\"")
    try:
        import torch

        has_gpu = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA setup is no GPU
        has_gpu = False
    if not has_gpu:
        missing.append("a CUDA GPU (torch.cuda.is_available() is False; TensorRT builds for the GPU it runs on)")
    return missing


def tensorrt_available(what: str = "TensorRT export") -> str | None:
    """None when TensorRT can build and run engines here, else one line saying what is missing.

    Example:
        >>> r = tensorrt_available()
        >>> r is None or r.startswith("TensorRT export needs")
        True
    """
    missing = tensorrt_missing()
    return f"{what} needs {' and '.join(missing)}" if missing else None


def require_tensorrt(what: str = "TensorRT export") -> Any:
    """Import tensorrt, or raise MissingDependencyError naming the package and/or the GPU.

    Example:
        >>> require_tensorrt()  # doctest: +SKIP
        <module 'tensorrt' ...>
    """
    reason = tensorrt_available(what)
    if reason is not None:
        raise MissingDependencyError(reason)
    return require("tensorrt", "tensorrt", what)
