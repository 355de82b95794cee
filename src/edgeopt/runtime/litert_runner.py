"""The ``litert`` runtime: a ``.tflite`` artifact in the LiteRT (TFLite) interpreter.

``ai_edge_litert`` (installed by ``pip install "edgeopt[tflite]"``) is imported on first
use. The interpreter uses the built-in op resolver, which applies TFLite's default
delegate, XNNPACK, to every op it supports; ``num_threads`` is set explicitly (XNNPACK's
thread pool and the remaining CPU kernels share it).

Batches: edgeopt's TFLite files have a fixed batch (litert-torch cannot export a dynamic
one, and XNNPACK cannot resize the baked shape). ``predict`` therefore runs any batch in
chunks of the file's batch size, padding the last chunk with zeros and dropping those
rows. A file whose batch dimension *is* dynamic (``shape_signature[0] == -1``, e.g. from
another converter) is resized instead, once per new batch size.

int8 files take int8 inputs: the float batch is quantized with the input tensor's scale
and zero point (``q = clip(round(x / scale) + zero_point, -128, 127)``), and int8 logits
are dequantized (``(q - zero_point) * scale``), so ``predict`` is float in, float out for
every precision.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError, brief, require
from edgeopt.runtime._base import RUNNERS, bind_target, check_batch, check_threads


def _litert_interpreter() -> Any:
    return require("ai_edge_litert.interpreter", "tflite", "the litert runtime")


def _quantize(x: np.ndarray, dtype: Any, scale: float, zero: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


@RUNNERS.register("litert", help="LiteRT / TFLite interpreter with the XNNPACK delegate (CPU)")
class LiteRTRunner:
    """Run a TFLite artifact with the LiteRT interpreter (XNNPACK delegate).

    Args:
        target: an Artifact of format ``"tflite"``.
        threads: ``num_threads`` of the interpreter (XNNPACK's thread pool).
        xnnpack: apply the XNNPACK delegate (default). False runs TFLite's built-in
            kernels only, to check whether a difference comes from the delegate.

    Raises:
        ArtifactError: the file is corrupt, truncated or not TFLite, or its input shape
            disagrees with the artifact's ModelSpec.
        MissingDependencyError: ai-edge-litert is not installed (``pip install "edgeopt[tflite]"``).

    Example:
        >>> runner = LiteRTRunner(Artifact.load("model.tflite"), threads=2)  # doctest: +SKIP
        >>> runner.predict(np.zeros((5, 1, 8, 8), np.float32)).shape  # doctest: +SKIP
        (5, 10)
    """

    name = "litert"
    formats = ("tflite",)

    def __init__(self, target: Any, threads: int | None = None, xnnpack: bool = True) -> None:
        bind_target(self, target, target.spec, threads)
        self.xnnpack = bool(xnnpack)
        self._build()

    @staticmethod
    def version() -> str | None:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return None
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("ai-edge-litert")
        except PackageNotFoundError:  # pragma: no cover - a source build
            return "unknown"

    def _build(self) -> None:
        lite = _litert_interpreter()
        path = self.artifact.path
        resolver = (
            lite.OpResolverType.BUILTIN if self.xnnpack else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read {path}: {exc.strerror}") from None
        # The interpreter's C++ flatbuffer verifier catches a truncated file; a file that is
        # not TFLite at all is refused here first, with a clearer message.
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise ArtifactError(f"{path} is not a TFLite file (no TFL3 identifier); re-export it")
        try:
            self.interpreter = lite.Interpreter(
                model_content=data, num_threads=self.threads, experimental_op_resolver_type=resolver
            )
            self.interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - the wrapper raises ValueError / RuntimeError
            msg = brief(exc)
            raise ArtifactError(
                f"the LiteRT interpreter cannot load {path} ({type(exc).__name__}: {msg}); the file is "
                f"corrupt or truncated: re-export it"
            ) from None
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ArtifactError(f"{path} has {len(ins)} inputs and {len(outs)} outputs; edgeopt runs single-input classifiers")
        self._in, self._out = ins[0], outs[0]
        sig = [int(v) for v in self._in["shape_signature"]]
        if len(sig) != 4 or tuple(sig[1:]) != self.input_shape:
            raise ArtifactError(
                f"{path} takes input {sig} but its sidecar says NCHW (C, H, W) = {self.input_shape}; "
                f"the sidecar belongs to another file: re-export the artifact"
            )
        #: None when the file's batch is dynamic; else the batch every invoke takes
        self.file_batch: int | None = None if sig[0] < 0 else sig[0]
        self._batch = int(self._in["shape"][0])
        self._in_dtype = self._in["dtype"]
        self._in_q = self._in["quantization"]  # (scale, zero_point); scale 0: not quantized
        self._out_q = self._out["quantization"]

    def set_threads(self, threads: int) -> None:
        """Rebuild the interpreter with another thread count."""
        threads = check_threads(threads)
        if threads != self.threads:
            self.threads = threads
            self._build()

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        if x.shape[0] != self._batch:  # only reached for a dynamic-batch file
            it.resize_tensor_input(self._in["index"], list(x.shape), strict=True)
            it.allocate_tensors()
            self._batch = x.shape[0]
        if np.issubdtype(self._in_dtype, np.integer):
            scale, zero = self._in_q
            x = _quantize(x, self._in_dtype, scale, zero)
        elif self._in_dtype != np.float32:
            x = x.astype(self._in_dtype)
        it.set_tensor(self._in["index"], x)
        it.invoke()
        y = it.get_tensor(self._out["index"])
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = self._out_q
            return (y.astype(np.float32) - zero) * np.float32(scale)
        return y.astype(np.float32, copy=True)  # get_tensor's buffer is reused by the next invoke

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]`` (any N).

        Raises:
            ArtifactError: the batch shape is not ``[N, C, H, W]`` of the artifact.
        """
        x = check_batch(batch, self.input_shape, f"the TFLite artifact {self.artifact.path.name}")
        try:
            if self.file_batch is None:
                return self._invoke(x).reshape(x.shape[0], -1)
            b = self.file_batch
            outs = []
            for i in range(0, x.shape[0], b):
                chunk = x[i : i + b]
                n = chunk.shape[0]
                if n < b:  # pad the last chunk: the file takes exactly b images
                    chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
                outs.append(self._invoke(chunk)[:n])
            return np.concatenate(outs).reshape(x.shape[0], -1)
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - shapes are checked above
            msg = brief(exc)
            raise ArtifactError(f"LiteRT failed on {self.artifact.path.name}: {msg}") from None
