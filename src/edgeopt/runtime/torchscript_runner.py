"""The ``torchscript`` runtime: a ``.torchscript`` archive loaded with ``torch.jit.load``.

Security note: a TorchScript archive *contains code by design* (the TorchScript program
of ``forward``), which ``torch.jit.load`` compiles and runs in the TorchScript interpreter.
Unlike a pickle it cannot import arbitrary Python modules, but it can call any operator
registered with torch (file I/O included), so load only archives you exported yourself
or trust -- the same rule as for any model program (ONNX, TFLite are data; this is not).
edgeopt's own weights and checkpoints stay safetensors / ``weights_only`` files.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError, brief
from edgeopt.runtime._base import RUNNERS, TorchVersionMixin, bind_target, check_batch


@contextlib.contextmanager
def _engine(engine: str | None) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` to ``engine`` for the block (None: leave it)."""
    import torch

    before = torch.backends.quantized.engine
    if engine is None or engine == before:
        yield
        return
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@RUNNERS.register("torchscript", help="TorchScript (torch.jit.load; the LibTorch C++ runtime runs the same file)")
class TorchScriptRunner(TorchVersionMixin):
    """Run a TorchScript artifact: ``torch.jit.load(map_location="cpu")``, fixed threads.

    The thread count is set with ``torch.set_num_threads`` around each ``predict`` and
    restored afterwards (the same as the ``torch`` runner), and inference runs under
    ``torch.inference_mode``. The TorchScript profiling executor specialises the graph on
    the first calls: time it after warm-up (``measure_latency`` does). An int8 archive from
    the torch quantization backend names its quantized engine in the sidecar
    (``meta["quantized_engine"]``: x86, fbgemm or qnnpack); ``torch.backends.quantized.engine``
    is set to it while loading and predicting, and restored afterwards.

    Args:
        target: an Artifact of format ``"torchscript"``.
        threads: intra-op threads inside ``predict``.

    Raises:
        ArtifactError: the file is corrupt, truncated or not TorchScript, or the spec
            embedded in it disagrees with the sidecar's input shape.

    Example:
        >>> runner = TorchScriptRunner(Artifact.load("model.torchscript"), threads=1)  # doctest: +SKIP
        >>> runner.predict(np.zeros((4, 1, 8, 8), np.float32)).shape  # doctest: +SKIP
        (4, 10)
    """

    name = "torchscript"
    formats = ("torchscript",)

    def __init__(self, target: Any, threads: int | None = None) -> None:
        import torch

        from edgeopt._backends import SPEC_EXTRA_FILE

        bind_target(self, target, target.spec, threads)
        path = target.path
        # int8 archives from the torch quantization backend: their packed weights are unpacked
        # for one quantized engine at load time, and the int8 ops dispatch on it at run time
        self.quantized_engine = (target.meta or {}).get("quantized_engine")
        if self.quantized_engine == "pt2e-x86":  # not a torch.backends.quantized engine
            self.quantized_engine = None
        if self.quantized_engine and self.quantized_engine not in torch.backends.quantized.supported_engines:
            raise ArtifactError(
                f"{path} is int8 for the '{self.quantized_engine}' quantized engine, which this torch build lacks "
                f"(it has {', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')}); "
                f"re-quantize it for one of those"
            )
        extra = {SPEC_EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings(), _engine(self.quantized_engine):
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError, ... on bad archives
            msg = brief(exc)
            raise ArtifactError(
                f"torch.jit.load cannot load {path} ({type(exc).__name__}: {msg}); the file is corrupt, "
                f"truncated or not TorchScript: re-export it"
            ) from None
        self.module.eval()
        if extra[SPEC_EXTRA_FILE]:
            try:
                embedded = tuple(json.loads(extra[SPEC_EXTRA_FILE]).get("input_shape") or ())
            except (ValueError, AttributeError):
                embedded = ()
            if embedded and embedded != self.input_shape:
                raise ArtifactError(
                    f"{path} was exported for input {list(embedded)} but its sidecar says (C, H, W) = "
                    f"{self.input_shape}; the sidecar belongs to another file: re-export the artifact"
                )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]``.

        Raises:
            ArtifactError: the batch is not ``[N, C, H, W]`` of the artifact, or the
                TorchScript program fails on it.
        """
        import torch

        x = check_batch(batch, self.input_shape, f"the TorchScript artifact {self.artifact.path.name}")
        before = torch.get_num_threads()
        try:
            if before != self.threads:  # set_num_threads is not free; skip when already right
                torch.set_num_threads(self.threads)
            with torch.inference_mode(), _engine(self.quantized_engine):
                out = self.module(torch.from_numpy(x))
        except Exception as exc:  # noqa: BLE001 - a TorchScript error is one long RuntimeError
            msg = brief(exc)
            raise ArtifactError(f"TorchScript failed on {self.artifact.path.name}: {msg}") from None
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        if isinstance(out, (tuple, list)):  # e.g. (logits, features): logits come first
            out = out[0]
        return out.detach().float().cpu().numpy()
