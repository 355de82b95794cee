"""Core ML export: an ML Program in a ``.mlpackage`` folder (extra ``coreml``).

Capture (measured with coremltools 9.0 and torch 2.14.1, which coremltools has not been
tested with: it says so at import and edgeopt records it in the sidecar): coremltools 9
converts both a ``torch.jit.trace``'d module and a ``torch.export`` ExportedProgram.
``capture="trace"`` is the default: it is coremltools' mature frontend, takes a flexible
batch (``RangeDim``) without symbolic-shape reasoning, and was faster end to end
(capture + convert: simple_cnn 2.5 s, resnet20 3.9 s, mobilenetv2 10.3 s vs 3.6 s, 4.3 s
and 21.1 s with ``torch.export`` and a dynamic batch, on 1 thread). ``capture="export"``
is kept for models tracing cannot capture faithfully.

Precisions: ``fp32`` and ``fp16`` are ``compute_precision`` of the ML Program (fp16 stores
weights in fp16 and computes in fp16 on the device); ``int8`` is fp32 compute with int8
weights (``coremltools.optimize.coreml.linear_quantize_weights``, symmetric, per output
channel, every weight however small: coremltools' default skips tensors under 2048
elements, which is most of a small edge model).

On Linux Core ML cannot predict, so the export *validates* the package instead: the saved
spec is read back (``coremltools.utils.load_spec``) and its input name and shape, output
shape (from the ML Program's typed outputs) and the data type of the stored weights are
checked against the ModelSpec and the precision asked for. Parity is recorded as "not
run: CoreML predicts only on macOS", never as a pass. On macOS the ``coreml`` runner
predicts and ``export_model`` checks parity as for every format.

The package (a folder) is written atomically: saved into a temporary folder beside the
target, then renamed onto it (an old package is moved away first, then removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from edgeopt._backends import coremltools as _ct
from edgeopt._backends import quiet_coremltools as _quiet_coremltools
from edgeopt.config import Config
from edgeopt.errors import (
    ArtifactError,
    EdgeoptError,
    MissingDependencyError,
    UnsupportedModelError,
    brief,
)
from edgeopt.spec import ModelSpec

SUFFIX = ".mlpackage"
PRECISIONS = ("fp32", "fp16", "int8")
CAPTURES = ("trace", "export")
NOT_ON_MACOS = "CoreML predicts only on macOS"
_MAX_BATCH = 1024  # upper bound of the flexible batch dimension (Core ML needs one)
# MIL data types (coremltools.proto.MIL_pb2.DataType) of stored weights, by precision
_FLOAT16, _FLOAT32, _INT8 = 10, 11, 21
_WEIGHT_DTYPE = {"fp32": _FLOAT32, "fp16": _FLOAT16, "int8": _INT8}


def coreml_available() -> str | None:
    """None when Core ML *export* works here (coremltools installed), else the pip command.

    Prediction is another matter: see :func:`coreml_runnable`.

    Example:
        >>> coreml_available() is None or "pip install" in coreml_available()
        True
    """
    try:
        _ct()
    except MissingDependencyError as exc:
        return str(exc)
    return None


def coreml_runnable() -> str | None:
    """None on macOS (Core ML can predict), else why parity cannot run here.

    Example:
        >>> coreml_runnable() in (None, "CoreML predicts only on macOS")
        True
    """
    return None if sys.platform == "darwin" else NOT_ON_MACOS


@dataclasses.dataclass(frozen=True)
class CoreMLExportConfig(Config):
    """How to convert to a Core ML ML Program.

    Attributes:
        precision: ``fp32``; ``fp16`` (compute precision); ``int8`` (int8 weights,
            fp32 compute).
        capture: ``trace`` (``torch.jit.trace``, default) or ``export`` (``torch.export``).
        minimum_deployment_target: ``iOS16`` / ``macOS13`` or later (ML Programs with
            fp16 I/O and int8 weight compression need iOS16+).
        max_batch: the largest batch of the flexible batch dimension.

    Example:
        >>> CoreMLExportConfig(precision="int4")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ConfigError: CoreMLExportConfig.precision='int4' must be one of fp32, fp16, int8
    """

    precision: str = "fp32"
    capture: str = "trace"
    minimum_deployment_target: str = "iOS16"
    max_batch: int = _MAX_BATCH

    def validate(self) -> None:
        self._check_choice("precision", PRECISIONS)
        self._check_choice("capture", CAPTURES)
        self._check_choice("minimum_deployment_target", ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"))
        self._check_range("max_batch", 1, None)


def _capture(model: Any, spec: ModelSpec, cfg: CoreMLExportConfig) -> Any:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
        if cfg.capture == "trace":
            return torch.jit.trace(model, spec.example_input(1))
        batch = torch.export.Dim("batch", min=1, max=cfg.max_batch)
        ep = torch.export.export(model, (spec.example_input(2),), dynamic_shapes=({0: batch},))
        return ep.run_decompositions({})  # coremltools converts the ATen decomposition


def _convert(ct: Any, src: Any, spec: ModelSpec, cfg: CoreMLExportConfig) -> Any:
    import numpy as np

    kwargs: dict[str, Any] = {
        "convert_to": "mlprogram",
        "compute_precision": ct.precision.FLOAT16 if cfg.precision == "fp16" else ct.precision.FLOAT32,
        "minimum_deployment_target": getattr(ct.target, cfg.minimum_deployment_target),
        # float32 logits out whatever the compute precision: the Runner contract
        "outputs": [ct.TensorType(name="logits", dtype=np.float32)],
    }
    shape = (ct.RangeDim(1, cfg.max_batch, default=1), *spec.input_shape)
    kwargs["inputs"] = [ct.TensorType(name="input", shape=shape, dtype=np.float32)]
    mlmodel = ct.convert(src, **kwargs)
    if cfg.precision == "int8":
        import coremltools.optimize.coreml as cto

        op_cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=0)
        mlmodel = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op_cfg))
    return mlmodel


def _save_package_atomic(mlmodel: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = tmp / out.name
        mlmodel.save(str(staged))
        for f in staged.rglob("*"):  # flushed before the rename makes them visible
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if out.exists():  # os.replace cannot put a folder onto a non-empty folder
            os.replace(out, tmp / "previous.mlpackage")
        os.replace(staged, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def validate_package(path: str | Path, spec: ModelSpec, precision: str) -> dict[str, Any]:
    """Read a saved ``.mlpackage`` back and check it against the ModelSpec and precision.

    Checks: an ML Program; one input ``input`` of shape ``[N, C, H, W]`` with the spec's
    C, H, W (N flexible from 1); one output ``logits`` whose typed shape is
    ``[N, num_classes]``; the stored weights have the precision's data type (fp32: no fp16
    or int8 weights; fp16: fp16 weights; int8: int8 weights behind
    ``constexpr_affine_dequantize`` / ``constexpr_blockwise_shift_scale``).

    Returns:
        What was found: ``input_shape``, ``batch_range``, ``output_shape``,
        ``weight_dtypes`` (MIL data type name -> number of weight constants),
        ``spec_version``.

    Raises:
        ArtifactError: the package is unreadable or any check fails (one line).

    Example:
        >>> validate_package("model.mlpackage", spec, "fp16")["output_shape"]  # doctest: +SKIP
        [None, 10]
    """
    ct = _ct()
    from coremltools.proto import MIL_pb2

    p = Path(path)
    try:
        with _quiet_coremltools():
            mspec = ct.utils.load_spec(str(p))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, missing Manifest.json, ...
        raise ArtifactError(f"cannot read Core ML package {p}: {' '.join(str(exc).split())[:200]}") from None
    if mspec.WhichOneof("Type") != "mlProgram":
        raise ArtifactError(f"{p.name} is not an ML Program (it is {mspec.WhichOneof('Type')})")
    ins, outs = list(mspec.description.input), list(mspec.description.output)
    if len(ins) != 1 or len(outs) != 1:
        raise ArtifactError(f"{p.name} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1")
    arr = ins[0].type.multiArrayType
    ranges = [(r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges]
    in_shape = list(arr.shape)
    if ins[0].name != "input" or len(in_shape) != 4 or tuple(in_shape[1:]) != tuple(spec.input_shape):
        raise ArtifactError(f"{p.name}: input {ins[0].name} {in_shape}, expected input [N, {', '.join(map(str, spec.input_shape))}]")
    if ranges and (len(ranges) != 4 or ranges[0][0] != 1 or any(lo != hi for lo, hi in ranges[1:])):
        raise ArtifactError(f"{p.name}: input shape ranges {ranges} are not a flexible batch of fixed images")

    fn = mspec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    types = {o.name: o.type.tensorType for op in block.operations for o in op.outputs}
    out_t = types.get(outs[0].name)
    if out_t is None:
        raise ArtifactError(f"{p.name}: output {outs[0].name} is not produced by the program")
    out_shape = [d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in out_t.dimensions]
    if len(out_shape) != 2 or out_shape[1] != spec.num_classes:
        raise ArtifactError(f"{p.name}: output shape {out_shape}, expected [N, {spec.num_classes}]")

    # weights: constants with more than one element (scalars are op parameters)
    dtypes: dict[str, int] = {}
    for op in block.operations:
        if not op.type.startswith("const"):
            continue
        for o in op.outputs:
            t = o.type.tensorType
            n = 1
            for d in t.dimensions:
                n *= d.constant.size if d.WhichOneof("dimension") == "constant" else 1
            if n > 1 and t.dataType in (_FLOAT16, _FLOAT32) and op.type == "const":
                key = MIL_pb2.DataType.Name(t.dataType)
                dtypes[key] = dtypes.get(key, 0) + 1
        if op.type != "const":  # constexpr_*: compressed weights, stored as their inputs' type
            for arg in ("quantized_data", "data"):
                if arg in op.attributes:
                    key = MIL_pb2.DataType.Name(op.attributes[arg].type.tensorType.dataType)
                    dtypes[key] = dtypes.get(key, 0) + 1
    want = MIL_pb2.DataType.Name(_WEIGHT_DTYPE[precision])
    # fp32/fp16: every weight in that type; int8: int8 weights (float biases may remain)
    others = set() if precision == "int8" else set(dtypes) - {want}
    if want not in dtypes or others:
        raise ArtifactError(f"{p.name}: weights stored as {dtypes}, expected {want} for precision {precision}")
    return {
        "input_shape": in_shape,
        "batch_range": list(ranges[0]) if ranges else [in_shape[0], in_shape[0]],
        "output_shape": out_shape,
        "weight_dtypes": dtypes,
        "spec_version": int(mspec.specificationVersion),
    }


def export_coreml(model: Any, spec: ModelSpec, out_path: Path, cfg: CoreMLExportConfig) -> tuple[Any, dict[str, Any]]:
    """Convert ``model`` to a validated ``.mlpackage``, atomically.

    Called by ``export_model(model, "coreml", "out/model.mlpackage", config)``, which
    writes the sidecar and records parity (not run off macOS); call that, not this.

    Returns:
        ``(None, meta)``: precision, capture, the validation's findings, seconds, versions
        and the warnings coremltools gave about this torch version.

    Raises:
        UnsupportedModelError: capture or conversion fails (one line naming why).
        ArtifactError: the saved package does not validate.
    """
    import torch

    ct = _ct()
    t0 = time.perf_counter()
    try:
        src = _capture(model, spec, cfg)
        t_capture = time.perf_counter() - t0
        with _quiet_coremltools():
            mlmodel = _convert(ct, src, spec, cfg)
    except EdgeoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - coremltools raises ValueError, NotImplementedError, RuntimeError ...
        msg = brief(exc)
        raise UnsupportedModelError(
            f"coremltools cannot convert {type(model).__name__} (capture={cfg.capture}, {cfg.precision}): "
            f"{type(exc).__name__}: {msg}"
        ) from None
    t_convert = time.perf_counter() - t0 - t_capture
    _save_package_atomic(mlmodel, out_path)
    try:
        found = validate_package(out_path, spec, cfg.precision)
    except ArtifactError:
        shutil.rmtree(out_path, ignore_errors=True)  # an invalid package is no finished step
        raise
    tested = _tested_torch()
    notes = []
    if tested and _version_tuple(str(torch.__version__)) > _version_tuple(tested):
        # coremltools warns at import; keep it with the artifact rather than on stderr
        notes.append(f"coremltools {ct.__version__} is tested with torch <= {tested}; converted with "
                     f"torch {torch.__version__} (the package validated)")
    meta = {
        "precision": cfg.precision,  # export_model takes the artifact's precision from here
        "exporter": f"coremltools.convert({cfg.capture})",
        "capture": cfg.capture,
        "input_name": "input",
        "output_name": "logits",
        "validation": found,
        "capture_seconds": round(t_capture, 3),
        "convert_seconds": round(t_convert, 3),
        "export_seconds": round(time.perf_counter() - t0, 3),
        "versions": {"coremltools": str(ct.__version__), "torch": str(torch.__version__)},
        "notes": notes,
        "config": cfg.to_dict(),
    }
    return None, meta


def _tested_torch() -> str | None:
    """The newest torch this coremltools was tested with (its own constant), if it says."""
    with contextlib.suppress(Exception):
        from coremltools import _deps

        return str(_deps._TORCH_MAX_VERSION)
    return None


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for x in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in x if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
