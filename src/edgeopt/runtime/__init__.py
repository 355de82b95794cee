"""Runners: one per runtime, the same ``predict(batch)`` API for all.

A Runner takes float32 NCHW batches already normalised with the ModelSpec's mean/std and
returns float32 logits ``[N, classes]``. :func:`get_runner` builds one for an
``nn.Module``, an :class:`~edgeopt.artifact.Artifact` or an artifact path.

Runtimes: ``torch`` (eager), ``onnxruntime``. Heavy backends are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError
from edgeopt.runtime._base import DEFAULT_THREADS, RUNNERS, Runner, check_batch, check_threads
from edgeopt.runtime.onnxruntime_runner import OnnxRuntimeRunner
from edgeopt.runtime.torch_runner import TorchRunner
from edgeopt.runtime.litert_runner import LiteRTRunner
from edgeopt.runtime.torchscript_runner import TorchScriptRunner
from edgeopt.runtime.openvino_runner import OpenVINORunner
from edgeopt.runtime.coreml_runner import CoreMLRunner
from edgeopt.runtime.tensorrt_runner import TensorRTRunner
from edgeopt.runtime.torch_export_runner import TorchExportRunner

__all__ = [
    "DEFAULT_THREADS",
    "RUNNERS",
    "CoreMLRunner",
    "LiteRTRunner",
    "OnnxRuntimeRunner",
    "OpenVINORunner",
    "Runner",
    "TorchRunner",
    "TensorRTRunner",
    "TorchExportRunner",
    "TorchScriptRunner",
    "check_batch",
    "get_runner",
    "list_runtimes",
    "runtime_versions",
]


def get_runner(
    target: Any,
    runtime: str | None = None,
    threads: int | None = None,
    **options: Any,
) -> Runner:
    """Build a Runner for a model, an Artifact or an artifact path.

    Args:
        target: an ``nn.Module`` carrying a ModelSpec (runs in ``torch``), an
            :class:`~edgeopt.artifact.Artifact`, or the path of an artifact file
            (``.onnx``, ``.safetensors``).
        runtime: one of :func:`list_runtimes`; None: the artifact format's own runtime
            (``onnx`` -> ``onnxruntime``, ``checkpoint``/module -> ``torch``).
        threads: intra-op threads; None: ``DEFAULT_THREADS`` (1, explicit and
            reproducible).
        **options: runtime-specific options, e.g. ``providers=["cuda"]`` for onnxruntime.

    Returns:
        A Runner: ``predict(np.ndarray float32 [N, C, H, W]) -> np.ndarray [N, classes]``.

    Raises:
        ConfigError: unknown runtime, a runtime that cannot run this format, bad threads.
        ArtifactError: the artifact is missing, corrupt or has no usable sidecar.

    Example:
        >>> import numpy as np, torch
        >>> from edgeopt.spec import ModelSpec, attach_spec
        >>> m = attach_spec(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)),
        ...                 ModelSpec((1, 8, 8), 3, (0.5,), (0.25,)))
        >>> r = get_runner(m, threads=1)
        >>> r.name, r.input_shape, r.predict(np.zeros((5, 1, 8, 8), np.float32)).shape
        ('torch', (1, 8, 8), (5, 3))
    """
    import torch

    from edgeopt.artifact import Artifact

    if runtime is not None:
        RUNNERS.get(runtime)  # an unknown name fails first, listing the choices
    if isinstance(target, torch.nn.Module):
        fmt = "module"
        default = "torch"
    else:
        if isinstance(target, (str, Path)):
            target = Artifact.load(target)
        if not isinstance(target, Artifact):
            raise ConfigError(
                f"get_runner needs an nn.Module, an Artifact or a path, got {type(target).__name__}"
            )
        fmt = target.format
        default = target.default_runtime
    name = runtime or default
    cls = RUNNERS.get(name)
    if fmt not in cls.formats:
        what = "an in-memory model" if fmt == "module" else f"a '{fmt}' artifact"
        fix = (
            "export it first with edgeopt.export.export_model(model, 'onnx', path)"
            if fmt == "module"
            else f"use runtime '{default}'"
        )
        raise ConfigError(f"runtime '{name}' cannot run {what}; {fix}")
    return cls(target, threads=check_threads(threads), **options)


def list_runtimes() -> list[str]:
    """Names of the registered runtimes.

    Example:
        >>> {"onnxruntime", "torch"} <= set(list_runtimes())
        True
    """
    return RUNNERS.names()


def runtime_versions() -> dict[str, str | None]:
    """``{runtime: version}`` of every registered runtime; None where not installed.

    Example:
        >>> runtime_versions()["onnxruntime"] is not None
        True
    """
    out: dict[str, str | None] = {}
    for name in RUNNERS.names():
        try:
            out[name] = RUNNERS.get(name).version()
        except ImportError:  # pragma: no cover - depends on the environment
            out[name] = None
    return out
