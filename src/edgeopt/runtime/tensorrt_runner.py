"""The ``tensorrt`` runtime: a serialized ``.engine`` run with the TensorRT 10 Python API.

Why TensorRT's own runtime and not onnxruntime's TensorRT execution provider: the
artifact edgeopt ships and measures is the ``.engine`` file; the execution provider runs
an ONNX file and builds (and caches) its own engine, so it would measure something else.
Device buffers are torch CUDA tensors (torch is already a dependency), so no pycuda or
cuda-python is needed.

**Untested here** (no TensorRT, no GPU on the development machine); without them the
runner raises :class:`~edgeopt.errors.MissingDependencyError` naming what is missing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError
from edgeopt.runtime._base import RUNNERS, bind_target, check_batch


@RUNNERS.register("tensorrt", help="TensorRT (.engine on a CUDA GPU; extra 'tensorrt')")
class TensorRTRunner:
    """Run a TensorRT engine on the CUDA GPU.

    Args:
        target: an Artifact of format ``"tensorrt"``.
        threads: recorded only (the GPU runs the engine).

    Raises:
        MissingDependencyError: no tensorrt package or no CUDA GPU.
        ArtifactError: the engine is corrupt, truncated or was built for another
            GPU / TensorRT version.

    Example:
        >>> TensorRTRunner(Artifact.load("m.engine")).predict(x).shape  # doctest: +SKIP
        (64, 10)
    """

    name = "tensorrt"
    formats = ("tensorrt",)

    def __init__(self, target: Any, threads: int | None = None) -> None:
        from edgeopt._backends import require_tensorrt

        bind_target(self, target, target.spec, threads)
        trt = require_tensorrt("the TensorRT runtime")
        import torch

        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = runtime.deserialize_cuda_engine(target.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"TensorRT cannot deserialize {target.path.name}: corrupt, truncated, or built for another "
                f"GPU or TensorRT version ({trt.__version__}); rebuild it on this machine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) != 1:
            raise ArtifactError(f"{target.path.name} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1")
        self._in, self._out = ins[0], outs[0]
        self._stream = torch.cuda.Stream()

    @staticmethod
    def version() -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return None
        import tensorrt

        return str(tensorrt.__version__)

    def predict(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - needs a GPU
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]``."""
        torch = self._torch
        x = check_batch(batch, self.input_shape, f"the TensorRT engine {self.artifact.path.name}")
        if not self.context.set_input_shape(self._in, tuple(x.shape)):
            raise ArtifactError(f"{self.artifact.path.name} does not accept batch {x.shape[0]} (outside its profile)")
        with torch.cuda.stream(self._stream):
            xin = torch.from_numpy(x).cuda(non_blocking=False)
            out_shape = tuple(self.context.get_tensor_shape(self._out))
            out = torch.empty(out_shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self._in, xin.data_ptr())
            self.context.set_tensor_address(self._out, out.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise ArtifactError(f"TensorRT failed to run {self.artifact.path.name}")
        self._stream.synchronize()
        return out.cpu().numpy().astype(np.float32, copy=False)
