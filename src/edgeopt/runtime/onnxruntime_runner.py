"""The ``onnxruntime`` runtime: an ONNX artifact in an ``InferenceSession``.

onnxruntime is imported on first use. The session is built once per runner with a fixed
thread count (``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, sequential
execution), which is what an edge deployment does and what makes latencies comparable.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError, MissingDependencyError, brief, require
from edgeopt.runtime._base import RUNNERS, bind_target, check_batch, check_threads

#: short names -> onnxruntime execution providers, in the order they are tried
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

# ONNX tensor element types -> numpy dtypes of the inputs we feed.
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _ort():
    return require("onnxruntime", "dev", "the onnxruntime runtime")


@RUNNERS.register("onnxruntime", help="ONNX Runtime (CPU; CUDA/TensorRT when installed and asked for)")
class OnnxRuntimeRunner:
    """Run an ONNX artifact with onnxruntime.

    Args:
        target: an Artifact of format ``"onnx"``.
        threads: ``intra_op_num_threads`` of the session.
        providers: execution providers by short name (``"cpu"``, ``"cuda"``,
            ``"tensorrt"``) or full name, most preferred first. Default ``("cpu",)``.
            Asking for one that this onnxruntime build lacks is an error, never a silent
            fall-back to the CPU (that would mislabel every latency).

    Raises:
        ArtifactError: the file is corrupt or truncated, or its input shape disagrees
            with the artifact's ModelSpec.
        MissingDependencyError: onnxruntime, or a requested provider, is not installed.

    Example:
        >>> runner = OnnxRuntimeRunner(Artifact.load("model.onnx"), threads=2)  # doctest: +SKIP
        >>> runner.predict(np.zeros((4, 1, 8, 8), np.float32)).shape  # doctest: +SKIP
        (4, 10)
    """

    name = "onnxruntime"
    formats = ("onnx",)

    def __init__(self, target: Any, threads: int | None = None, providers: Any = None) -> None:
        bind_target(self, target, target.spec, threads)
        self.providers = self._resolve_providers(providers)
        self.fixed_batch: int | None = None  # the batch size a static-batch file demands
        self._build_session()

    @staticmethod
    def version() -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime

        return str(onnxruntime.__version__)

    @staticmethod
    def _resolve_providers(providers: Any) -> list[str]:
        if providers is None:
            return [PROVIDERS["cpu"]]
        if isinstance(providers, str):
            providers = [providers]
        names = [PROVIDERS.get(str(p).lower(), str(p)) for p in providers]
        available = set(_ort().get_available_providers())
        missing = [n for n in names if n not in available]
        if missing:
            hint = ' (pip install "onnxruntime-gpu")' if any("Tensorrt" in m or "CUDA" in m for m in missing) else ""
            raise MissingDependencyError(
                f"onnxruntime execution provider(s) {', '.join(missing)} not available; this build "
                f"has {', '.join(sorted(available))}{hint}"
            )
        if PROVIDERS["cpu"] not in names:  # the CPU EP runs the nodes the others cannot
            names.append(PROVIDERS["cpu"])
        return names

    def _build_session(self) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1  # one graph branch at a time: predictable, like a device
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # A plain file is optimized online at every start (ALL: onnxruntime's default). A
        # file optimized offline at a level (OnnxExportConfig.optimization) is loaded at
        # that same level: re-applying it is idempotent, and a higher level would make the
        # row measure another graph than the one shipped (see edgeopt.export.onnx_export).
        level = str((self.artifact.meta or {}).get("ort_optimization") or "none")
        member = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}.get(level, "ORT_ENABLE_ALL")
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, member)
        self.optimization_level = level
        opts.log_severity_level = 3  # errors only: no provider warnings on stderr
        path = self.artifact.path
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises InvalidProtobuf, Fail, ...
            msg = brief(exc)
            raise ArtifactError(
                f"onnxruntime cannot load {path} ({type(exc).__name__}: {msg}); the file is corrupt, "
                f"truncated or not ONNX: re-export it"
            ) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ArtifactError(f"{path} has {len(inputs)} inputs; edgeopt runs single-input image classifiers")
        self._input_name = inputs[0].name
        self._input_dtype = _ORT_DTYPES.get(inputs[0].type, np.float32)
        dims = list(inputs[0].shape)  # e.g. ['batch', 1, 8, 8]; symbolic dims are strings
        static = [d if isinstance(d, int) else None for d in dims[1:]]
        if len(dims) != 4 or any(s is not None and s != e for s, e in zip(static, self.input_shape)):
            raise ArtifactError(
                f"{path} takes input {dims} but its sidecar says (C, H, W) = {self.input_shape}; "
                f"the sidecar belongs to another file: re-export the artifact"
            )
        self.fixed_batch = dims[0] if isinstance(dims[0], int) else None

    def set_threads(self, threads: int) -> None:
        """Rebuild the session with another intra-op thread count."""
        threads = check_threads(threads)
        if threads != self.threads:
            self.threads = threads
            self._build_session()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]``.

        Raises:
            ArtifactError: the batch shape is not ``[N, C, H, W]`` of the artifact.
        """
        x = check_batch(batch, self.input_shape, f"the ONNX artifact {self.artifact.path.name}")
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            raise ArtifactError(
                f"{self.artifact.path.name} was exported with a fixed batch of {self.fixed_batch}, got "
                f"{x.shape[0]}; re-export with OnnxExportConfig(dynamic_batch=True)"
            )
        if self._input_dtype is not np.float32:
            x = x.astype(self._input_dtype)
        try:
            out = self.session.run(None, {self._input_name: x})[0]
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - shapes are checked above
            msg = brief(exc)
            raise ArtifactError(f"onnxruntime failed on {self.artifact.path.name}: {msg}") from None
        return np.asarray(out, dtype=np.float32)

