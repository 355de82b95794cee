"""The ``openvino`` runtime: an OpenVINO IR (``.xml`` + ``.bin``) or ONNX file on the CPU.

openvino is imported on first use. Every compile sets, explicitly:

* ``INFERENCE_PRECISION_HINT``: ``f32`` for fp32 artifacts, so fp32 means fp32 (the CPU
  plugin otherwise picks bf16 on CPUs with AMX/AVX512-BF16 and f16 on some ARM cores,
  which would silently change the numbers and the latency); fp16 artifacts ask for ``f16``
  where the CPU computes in it (``OPTIMIZATION_CAPABILITIES`` has ``FP16``), else ``f32``
  on the fp16 weights; int8 artifacts ``f32`` for the parts that are not quantized (the
  quantized convolutions run in int8 regardless). The precision actually compiled is read
  back into ``runner.inference_precision``.
* ``INFERENCE_NUM_THREADS`` = ``threads`` and ``PERFORMANCE_HINT`` = ``LATENCY`` (one
  stream, one request at a time: what an edge deployment does).

Batch size: by default the model is reshaped to the static batch of each ``predict`` call
and compiled once per batch size (a few compiled sizes are kept). Measured on resnet20,
1 thread, batch 1: a static-shape compile ran in 554-563 us median vs 640-648 us for one
compile with a dynamic batch (``[-1, C, H, W]``), ~13 % faster, because the CPU plugin
plans memory and picks kernels for the known shape. ``dynamic_batch=True`` compiles once
for every batch size (no re-compile, ~0.3-0.7 s each on this machine, when sizes vary).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError, ConfigError, brief, require
from edgeopt.runtime._base import RUNNERS, bind_target, check_batch, check_threads

#: artifact precision -> the OpenVINO CPU inference precision asked for
_HINTS = {"fp32": "f32", "int8": "f32", "mixed": "f32", "fp16": "f16", "bf16": "bf16"}
#: OPTIMIZATION_CAPABILITIES entry the CPU needs to compute in that precision
_CAPABILITY = {"f16": "FP16", "bf16": "BF16"}
_MAX_COMPILED = 4  # compiled batch sizes kept (parity uses 2, latency 1, throughput 1)
_SKIP_COUNT = ("i64", "boolean")  # shape/axis constants are not weights (as for ONNX)


def _ov():
    return require("openvino", "openvino", "the OpenVINO runtime")


def _read_model(core: Any, xml: Path) -> Any:
    from edgeopt._backends import quiet as _quiet

    # read_model tries every frontend on a file the IR reader rejects, and the TensorFlow
    # one prints parse errors on fd 2; the exception below says what went wrong in one line.
    try:
        with _quiet():
            return core.read_model(str(xml))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for every load failure
        raise ArtifactError(
            f"OpenVINO cannot read {xml.name} ({brief(exc)}); the .xml or its .bin is corrupt, "
            f"truncated or missing: re-export it"
        ) from None


def ir_weight_counts(path: str | Path) -> tuple[int, int]:
    """``(elements, non-zero elements)`` of an IR's weight constants (i64/bool ones excluded).

    Example:
        >>> ir_weight_counts("model.xml")  # doctest: +SKIP
        (272474, 272474)
    """
    ov = _ov()
    model = _read_model(ov.Core(), Path(path))
    n = nz = 0
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type().get_type_name() in _SKIP_COUNT:
            continue
        size = int(np.prod(list(op.get_output_shape(0)), dtype=np.int64))
        n += size
        try:
            nz += int(np.count_nonzero(op.get_data()))
        except Exception:  # noqa: BLE001 - packed types (i4, u1) have no numpy view: count all
            nz += size
    return n, nz


@RUNNERS.register("openvino", help="OpenVINO (CPU; IR .xml+.bin or ONNX; extra 'openvino')")
class OpenVINORunner:
    """Run an OpenVINO IR (or an ONNX file) with the OpenVINO CPU plugin.

    Args:
        target: an Artifact of format ``"openvino"`` (or ``"onnx"``).
        threads: ``INFERENCE_NUM_THREADS``.
        inference_precision: override the precision hint (``"f32"``, ``"f16"``, ``"bf16"``);
            None: from the artifact's precision (see the module docstring).
        dynamic_batch: compile once with a dynamic batch instead of once per batch size.
        device: the OpenVINO device; ``"CPU"`` is what edgeopt measures.

    Raises:
        ArtifactError: the ``.xml`` or ``.bin`` is missing, corrupt, truncated or from
            another export, or the model's input disagrees with the ModelSpec.
        MissingDependencyError: openvino is not installed.

    Example:
        >>> r = OpenVINORunner(Artifact.load("model.xml"), threads=2)  # doctest: +SKIP
        >>> r.predict(np.zeros((4, 1, 8, 8), np.float32)).shape, r.inference_precision  # doctest: +SKIP
        ((4, 10), 'f32')
    """

    name = "openvino"
    formats = ("openvino", "onnx")

    def __init__(
        self,
        target: Any,
        threads: int | None = None,
        inference_precision: str | None = None,
        dynamic_batch: bool = False,
        device: str = "CPU",
    ) -> None:
        bind_target(self, target, target.spec, threads)
        self.dynamic_batch = bool(dynamic_batch)
        self.device = device
        self.fixed_batch: int | None = None  # the batch a static-batch IR demands
        ov = _ov()
        self._core = ov.Core()
        self._hint = self._pick_hint(inference_precision)
        self._check_files()
        self._model = _read_model(self._core, self.artifact.path)
        self._check_input()
        self._compiled: OrderedDict[int, Any] = OrderedDict()  # batch -> (compiled, request)

    @property
    def inference_precision(self) -> str:
        """The precision the CPU plugin compiled for (``"f32"``, ``"f16"``, ``"bf16"``), read back.

        Compiles lazily (the first ``predict`` does too): a compile costs 0.3-0.7 s here.
        """
        compiled = next(reversed(self._compiled.values()))[0] if self._compiled else self._get(self._probe_batch())[0]
        return _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))

    @staticmethod
    def version() -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return None
        import openvino

        return str(openvino.get_version())

    # -- checks --------------------------------------------------------------------------
    def _pick_hint(self, requested: str | None) -> str:
        if requested is not None:
            if requested not in ("f32", "f16", "bf16"):
                raise ConfigError(f"inference_precision={requested!r} must be one of f32, f16, bf16")
            return requested
        hint = _HINTS.get(self.artifact.precision, "f32")
        caps = set(self._core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"))
        return hint if hint == "f32" or _CAPABILITY[hint] in caps else "f32"

    def _check_files(self) -> None:
        xml = self.artifact.path
        if self.artifact.format != "openvino":
            return
        binf = xml.with_suffix(".bin")
        if not binf.is_file():
            raise ArtifactError(f"{xml.name} has no weights file {binf.name} beside it; copy both files or re-export")
        meta = self.artifact.meta
        size = binf.stat().st_size
        if "weights_bytes" in meta and size != meta["weights_bytes"]:
            raise ArtifactError(
                f"{binf.name} has {size} bytes, its export wrote {meta['weights_bytes']}: the file is "
                f"truncated or from another export; re-export it"
            )
        if "weights_sha256" in meta:
            from edgeopt._io import file_sha256

            if file_sha256(binf) != meta["weights_sha256"]:
                raise ArtifactError(
                    f"{binf.name} does not match the SHA-256 its export recorded: the weights are corrupt "
                    f"or from another export; re-export it"
                )

    def _check_input(self) -> None:
        m, path = self._model, self.artifact.path
        if len(m.inputs) != 1:
            raise ArtifactError(f"{path.name} has {len(m.inputs)} inputs; edgeopt runs single-input image classifiers")
        ps = m.inputs[0].get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in ps] if ps.rank.is_static else None
        if dims is None or len(dims) != 4 or any(s is not None and s != e for s, e in zip(dims[1:], self.input_shape)):
            raise ArtifactError(
                f"{path.name} takes input {ps} but its sidecar says (C, H, W) = {self.input_shape}; "
                f"the sidecar belongs to another file: re-export the artifact"
            )
        self.fixed_batch = dims[0]

    def _probe_batch(self) -> int:
        return self.fixed_batch or 1

    # -- compile -------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "INFERENCE_PRECISION_HINT": self._hint,
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }

    def _get(self, batch: int) -> tuple[Any, Any]:
        """The compiled model and its infer request for ``batch`` (compiled on first use)."""
        key = -1 if (self.dynamic_batch and self.fixed_batch is None) else batch
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        if self.fixed_batch is None:  # key -1: a dynamic batch
            self._model.reshape([key, *self.input_shape])
        try:
            compiled = self._core.compile_model(self._model, self.device, self._config())
        except Exception as exc:  # noqa: BLE001 - RuntimeError with a C++ trace
            raise ArtifactError(f"OpenVINO cannot compile {self.artifact.path.name} for {self.device}: {brief(exc)}") from None
        entry = (compiled, compiled.create_infer_request())
        self._compiled[key] = entry
        while len(self._compiled) > _MAX_COMPILED:
            self._compiled.popitem(last=False)
        return entry

    def set_threads(self, threads: int) -> None:
        """Recompile with another ``INFERENCE_NUM_THREADS``."""
        threads = check_threads(threads)
        if threads != self.threads:
            self.threads = threads
            self._compiled.clear()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]``.

        Raises:
            ArtifactError: the batch shape is not ``[N, C, H, W]`` of the artifact.
        """
        x = check_batch(batch, self.input_shape, f"the OpenVINO artifact {self.artifact.path.name}")
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            raise ArtifactError(
                f"{self.artifact.path.name} was exported with a fixed batch of {self.fixed_batch}, got {x.shape[0]}"
            )
        _, request = self._get(int(x.shape[0]))
        try:
            request.infer([x])
            out = request.get_output_tensor(0).data
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - shapes are checked above
            raise ArtifactError(f"OpenVINO failed on {self.artifact.path.name}: {brief(exc)}") from None
        return np.array(out, dtype=np.float32)  # a copy: the request reuses its buffer

    def runtime_precisions(self) -> dict[tuple[str, str], int]:
        """``{(layer type, runtime precision): count}`` of the compiled graph (e.g. int8 convs).

        Example:
            >>> r.runtime_precisions()[("Convolution", "u8")]  # doctest: +SKIP
            21
        """
        compiled, _ = self._get(self._probe_batch())
        out: dict[tuple[str, str], int] = {}
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            key = (str(info["layerType"].astype(str)), str(info["runtimePrecision"].astype(str)))
            out[key] = out.get(key, 0) + 1
        return out


def _type_name(t: Any) -> str:
    """``<Type: 'float32'>`` -> ``"f32"``."""
    with contextlib.suppress(Exception):
        return str(t.get_type_name())
    return str(t)
