"""The ``coreml`` runtime: ``MLModel.predict`` on a ``.mlpackage`` (macOS only).

Core ML's prediction engine is part of macOS; coremltools on Linux can convert and read
packages but not run them. Off macOS this runner refuses at construction with one line
(a :class:`~edgeopt.errors.MissingDependencyError`, so callers that skip what this machine
lacks, such as ``compare_runtimes``, skip it) instead of failing later inside coremltools.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError, MissingDependencyError
from edgeopt.runtime._base import RUNNERS, bind_target, check_batch


def macos_required_message(path: Any) -> str:
    """The one-line reason a Core ML package cannot run on this OS.

    Example:
        >>> "needs macOS" in macos_required_message("m.mlpackage")
        True
    """
    return (
        f"Core ML prediction needs macOS (this is {sys.platform}): {path} was converted and validated "
        f"but cannot run here; run it on a Mac, or use the 'onnxruntime' or 'openvino' runtime here"
    )


@RUNNERS.register("coreml", help="Core ML (MLModel.predict; macOS only; extra 'coreml')")
class CoreMLRunner:
    """Run a ``.mlpackage`` with Core ML (macOS).

    Args:
        target: an Artifact of format ``"coreml"``.
        threads: recorded only; Core ML schedules its own threads.
        compute_units: ``"CPU_ONLY"`` (default: comparable with the other CPU runtimes),
            ``"CPU_AND_GPU"``, ``"CPU_AND_NE"`` or ``"ALL"``.

    Raises:
        MissingDependencyError: not on macOS, or coremltools is not installed.
        ArtifactError: the package cannot be loaded.

    Example:
        >>> CoreMLRunner(Artifact.load("m.mlpackage"))  # doctest: +SKIP
        Traceback (most recent call last):
        edgeopt.errors.MissingDependencyError: Core ML prediction needs macOS (this is linux): ...
    """

    name = "coreml"
    formats = ("coreml",)

    def __init__(self, target: Any, threads: int | None = None, compute_units: str = "CPU_ONLY") -> None:
        bind_target(self, target, target.spec, threads)
        if sys.platform != "darwin":
            raise MissingDependencyError(macos_required_message(target.path.name))
        from edgeopt._backends import coremltools as _ct
        from edgeopt._backends import quiet_coremltools as _quiet_coremltools

        ct = _ct()
        try:
            with _quiet_coremltools():
                self.model = ct.models.MLModel(str(target.path), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:  # noqa: BLE001 - coremltools raises RuntimeError, ValueError ...
            raise ArtifactError(f"Core ML cannot load {target.path}: {' '.join(str(exc).split())[:300]}") from None

    @staticmethod
    def version() -> str | None:
        if importlib.util.find_spec("coremltools") is None:
            return None
        return importlib.metadata.version("coremltools")

    def predict(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - macOS only
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]``."""
        x = check_batch(batch, self.input_shape, f"the Core ML artifact {self.artifact.path.name}")
        try:
            out = self.model.predict({"input": x})["logits"]
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"Core ML failed on {self.artifact.path.name}: {' '.join(str(exc).split())[:300]}") from None
        return np.asarray(out, dtype=np.float32).reshape(x.shape[0], -1)
