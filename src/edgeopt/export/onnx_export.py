"""ONNX export: one self-contained ``.onnx`` file with a dynamic batch dimension.

Which torch exporter, and why (measured on torch 2.14.1, every zoo model at 1x8x8):

* ``dynamo=True`` (torch.export-based; torch's default since 2.9) is the default here.
  It exported all seven zoo models with parity <= 1e-5 on real digits, and it is the
  robust one: it *refuses* models it cannot capture faithfully (a Python ``if`` on a
  tensor value, a reshape that hard-codes the batch size) with an error naming the
  source line, where the legacy tracer silently bakes one branch / one batch size into
  the graph and the file is wrong for other inputs. It also converts more operators
  (e.g. ``torch.fft``), and the legacy exporter is deprecated ("will be removed").
* ``dynamo=False`` (TorchScript tracing) is kept as an option because it is 20-40x
  faster (resnet56: ~0.9 s vs ~20 s; mobilenetv2: ~1.1 s vs ~35 s on 2 cores, most of
  the dynamo time is symbolic-shape reasoning for the dynamic batch). Export here is
  always followed by the parity check and a batch-1 / batch-7 check, which catch a
  baked batch size or a wrong branch on the samples given.

torch 2.14's dynamo exporter writes weights to an external ``FILE.onnx.data`` file by
default (``external_data=True``), even for tiny models. edgeopt ships one file: the
exporter writes into a private temporary folder, the model is loaded back with any
external data, and saved with ``save_as_external_data=False`` through an atomic rename.

ONNX Runtime graph optimization levels (``OnnxExportConfig.optimization``): ``"none"``
(default) ships the plain exported graph, which onnxruntime optimizes *online* at every
session start (the runner uses ``ORT_ENABLE_ALL``). ``"basic"``, ``"extended"`` or
``"all"`` optimize *offline*: an ORT session with that ``graph_optimization_level``
writes the optimized graph (``optimized_model_filepath``), and that file becomes the
artifact, so a device starts faster and the row measures exactly that level. The runner
loads such a file at the same level it was optimized with (re-applying a level is
idempotent; measured on mobilenetv2: same graph, same latency, same logits). The level is
recorded in the sidecar (``meta["ort_optimization"]``) and the file's metadata.

Warning: ``"extended"`` adds ``com.microsoft`` fused operators (FusedConv, ...) and
``"all"`` adds layout optimizations (NCHWc blocked convolutions, ``com.microsoft.nchwc``
ops) tuned to this CPU's vector width. Such a file runs only in onnxruntime (no other
ONNX runtime knows those ops) and should be deployed only on hardware like the machine
that optimized it; ship ``"none"`` or ``"basic"`` when the target differs.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from edgeopt._backends import quiet as _quiet  # noqa: F401 - also used by the other exporters
from edgeopt._io import write_with_atomic
from edgeopt.artifact import ONNX_SPEC_KEY
from edgeopt.config import Config
from edgeopt.errors import (
    ArtifactError,
    ConfigError,
    EdgeoptError,
    ExportMismatchError,
    MissingDependencyError,
    UnsupportedModelError,
    brief,
    require,
)
from edgeopt.spec import ModelSpec

# The torch exporters' opset ranges (torch.onnx._constants in 2.14): the TorchScript
# exporter stops at 20; the dynamo exporter translates natively from opset 18 up.
_LEGACY_OPSETS = (13, 20)
_DYNAMO_OPSETS = (18, 23)
_ONNX_PROTO_LIMIT = 2 * 1024**3  # protobuf cannot hold a single file above 2 GiB
#: OnnxExportConfig.optimization -> onnxruntime GraphOptimizationLevel member
ORT_LEVELS = {
    "none": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
ORT_LEVEL_KEY = "edgeopt.ort_optimization"  # ONNX metadata_props key of the offline level


@dataclasses.dataclass(frozen=True)
class OnnxExportConfig(Config):
    """How to export to ONNX.

    Attributes:
        opset: ONNX opset; 18-23 with the dynamo exporter, 13-20 with the legacy one.
        dynamic_batch: the batch dimension is symbolic (``"batch"``), so one file serves
            batch 1 (latency) and large batches (throughput).
        dynamo: use the torch.export-based exporter (default, robust; see the module
            docstring) or the legacy TorchScript tracer (faster).
        optimize: run the dynamo exporter's onnxscript graph optimizer (constant folding,
            dead-code removal); ignored with ``dynamo=False`` (which always folds constants).
        example_batch: batch size of the example traced; >= 2 because torch.export
            specialises dimensions of size 1.
        fixed_batch: the batch size baked in when ``dynamic_batch=False``.
        input_name / output_name: graph input and output names.
        check_batches: batch sizes run through onnxruntime after export and compared
            with the eager model, to prove the batch dimension really is dynamic.
        optimization: onnxruntime graph optimization applied offline and saved as the
            artifact: ``"none"`` (the plain export), ``"basic"``, ``"extended"`` or
            ``"all"``. ``"extended"``/``"all"`` files are onnxruntime-only and ``"all"``
            is tuned to this CPU (see the module docstring).

    Example:
        >>> OnnxExportConfig(opset=17)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ConfigError: OnnxExportConfig.opset=17 must be in [18, 23]
        >>> OnnxExportConfig(dynamo=False, opset=17).opset
        17
    """

    opset: int = 18
    dynamic_batch: bool = True
    dynamo: bool = True
    optimize: bool = True
    example_batch: int = 2
    fixed_batch: int = 1
    input_name: str = "input"
    output_name: str = "logits"
    check_batches: tuple[int, ...] = (1, 7)
    optimization: str = "none"

    def validate(self) -> None:
        self._check_choice("optimization", ORT_LEVELS)
        lo, hi = _DYNAMO_OPSETS if self.dynamo else _LEGACY_OPSETS
        self._check_range("opset", lo, hi)
        self._check_range("example_batch", 2, None)
        self._check_range("fixed_batch", 1, None)
        if not self.input_name or not self.output_name or self.input_name == self.output_name:
            raise ConfigError("OnnxExportConfig input_name and output_name must be distinct non-empty names")
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.check_batches):
            raise ConfigError(f"OnnxExportConfig.check_batches={self.check_batches!r} must be integers >= 1")

    @property
    def exporter(self) -> str:
        return "dynamo" if self.dynamo else "torchscript"


def onnx_available() -> str | None:
    """None when ONNX export (onnx) and its check (onnxruntime) can run here, else why not.

    Example:
        >>> onnx_available() is None
        True
    """
    for module in ("onnx", "onnxruntime"):
        try:
            require(module, "dev", "ONNX export")
        except MissingDependencyError as exc:
            return str(exc)
    return None


def _precision_of_model(model: Any) -> str:
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(p.dtype, "fp32")
    return "fp32"


def _torch_export(model: Any, example: Any, dst: Path, cfg: OnnxExportConfig) -> None:
    """Call ``torch.onnx.export`` into ``dst`` (which may get a ``.data`` file beside it)."""
    import torch

    names = {"input_names": [cfg.input_name], "output_names": [cfg.output_name], "opset_version": cfg.opset}
    # Both exporters chat ("[torch.onnx] Obtain model graph ...", the legacy deprecation
    # warning, and on failure a C++ dump of the whole TorchScript graph on fd 2); errors
    # still surface as exceptions, which export_onnx turns into one line.
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cfg.dynamo:
            dyn = ({0: torch.export.Dim("batch")},) if cfg.dynamic_batch else None
            torch.onnx.export(
                model, (example,), str(dst), dynamo=True, external_data=False, dynamic_shapes=dyn,
                optimize=cfg.optimize, verbose=False, **names,
            )
        else:
            axes = {cfg.input_name: {0: "batch"}, cfg.output_name: {0: "batch"}} if cfg.dynamic_batch else None
            torch.onnx.export(
                model, (example,), str(dst), dynamo=False, dynamic_axes=axes, do_constant_folding=True,
                verbose=False, **names,
            )


def export_onnx(model: Any, spec: ModelSpec, out_path: Path, cfg: OnnxExportConfig) -> tuple[Any, dict[str, Any]]:
    """Export ``model`` (in eval mode) to one self-contained ONNX file, atomically.

    Returns:
        ``(proto_summary, meta)``: meta records opset, exporter, export seconds, versions.

    Raises:
        UnsupportedModelError: the exporter cannot handle a layer (named) or the model.
        ExportMismatchError: the file gives other results at the check batch sizes.
    """
    import torch

    onnx = require("onnx", "dev", "ONNX export")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    batch = cfg.example_batch if cfg.dynamic_batch else cfg.fixed_batch
    example = spec.example_input(batch).to(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeopt-onnx-") as tmp:
        dst = Path(tmp) / "model.onnx"
        try:
            _torch_export(model, example, dst, cfg)
        except EdgeoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - every exporter failure becomes one line naming the layer
            from edgeopt.export._diagnose import unsupported_model_error

            raise unsupported_model_error(
                exc, model, example, fmt="onnx", exporter=cfg.exporter, opset=cfg.opset
            ) from None
        proto = onnx.load(str(dst))  # also pulls in model.onnx.data if the exporter wrote one
    seconds = time.perf_counter() - t0

    if proto.ByteSize() > _ONNX_PROTO_LIMIT:
        raise UnsupportedModelError(
            f"the ONNX model is {proto.ByteSize() / 1024**3:.1f} GiB; one ONNX file holds at most 2 GiB "
            f"(prune or quantize it first)"
        )
    # the dynamo exporter annotates every node and value with its PyTorch origin (module
    # path, class hierarchy, fx node text): 354 kB of MobileNetV2's 2.8 MB int8 QAT file.
    # Useful while debugging an export, dead weight on a device.
    for node in proto.graph.node:
        del node.metadata_props[:]
    for value in proto.graph.value_info:
        del value.metadata_props[:]
    del proto.metadata_props[:]
    for key, value in {
        ONNX_SPEC_KEY: json.dumps(spec.to_dict()),  # lets a sidecar-less file still say what it takes
        "edgeopt.exporter": cfg.exporter,
        **({ORT_LEVEL_KEY: cfg.optimization} if cfg.optimization != "none" else {}),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = proto.producer_name or "pytorch"

    def _save(tmp_path: Path) -> None:
        onnx.save_model(proto, str(tmp_path), save_as_external_data=False)
        onnx.checker.check_model(str(tmp_path), full_check=True)  # before it becomes visible

    try:
        if cfg.optimization == "none":
            write_with_atomic(out_path, _save)
        else:
            with tempfile.TemporaryDirectory(prefix="edgeopt-onnx-") as tmp:
                plain = Path(tmp) / "plain.onnx"
                _save(plain)  # checked before ORT rewrites it (contrib ops fail onnx.checker)
                write_with_atomic(out_path, lambda dst: ort_optimize(plain, dst, cfg.optimization))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        msg = brief(exc)
        raise UnsupportedModelError(f"the exported ONNX graph fails onnx.checker: {msg}") from None

    meta = {
        "opset": cfg.opset,
        "exporter": cfg.exporter,
        "dynamic_batch": cfg.dynamic_batch,
        "input_name": cfg.input_name,
        "output_name": cfg.output_name,
        "export_seconds": round(seconds, 3),
        "versions": {"torch": str(torch.__version__), "onnx": str(onnx.__version__)},
        "config": cfg.to_dict(),
    }
    if cfg.optimization != "none":
        import onnxruntime

        meta["ort_optimization"] = cfg.optimization
        meta["versions"]["onnxruntime"] = str(onnxruntime.__version__)
    return proto, meta


def ort_optimize(src: str | Path, dst: str | Path, level: str) -> Path:
    """Optimize an ONNX file offline with onnxruntime and write the result to ``dst``.

    An ORT CPU session at ``level`` is built on ``src`` with ``optimized_model_filepath``
    set, which makes onnxruntime save the graph it would run. Not atomic by itself
    (:func:`export_onnx` calls it on a temporary name).

    Args:
        src: the plain ONNX file.
        dst: where the optimized ONNX file goes (written in ONNX, not ORT, format).
        level: ``"basic"``, ``"extended"`` or ``"all"`` (see :data:`ORT_LEVELS`).

    Returns:
        ``dst``.

    Raises:
        ConfigError: unknown level.
        UnsupportedModelError: onnxruntime cannot load or optimize the graph.

    Example:
        >>> ort_optimize("m.onnx", "m-basic.onnx", "basic")  # doctest: +SKIP
        PosixPath('m-basic.onnx')
    """
    ort = require("onnxruntime", "dev", "ONNX Runtime graph optimization")
    if level not in ORT_LEVELS or level == "none":
        raise ConfigError(f"ORT optimization level {level!r} must be one of basic, extended, all")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[level])
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3  # "all" warns that the file is hardware-specific: documented above
    try:
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises Fail, InvalidGraph, ...
        msg = brief(exc)
        raise UnsupportedModelError(f"onnxruntime cannot optimize the graph at level {level!r}: {msg}") from None
    if not Path(dst).is_file() or Path(dst).stat().st_size == 0:
        raise UnsupportedModelError(f"onnxruntime wrote no optimized model at level {level!r}")
    return Path(dst)


def check_batch_sizes(model: Any, artifact: Any, batches: tuple[int, ...], tolerance: Any = None) -> None:
    """Run the artifact at each batch size and compare with eager (fp32 or own precision).

    Uses the spec's deterministic random inputs (real samples are checked by parity); a
    batch dimension that was silently fixed shows up here as a shape or value mismatch.
    A user's parity ``tolerance`` with rtol/atol (see ``verify_parity``) replaces the
    default bound, so no check is stricter than the tolerance the user stated.

    Raises:
        ExportMismatchError: a batch size fails or gives other logits than the eager model.
    """
    from edgeopt.export.parity import ParityThresholds, compare_logits
    from edgeopt.runtime import get_runner

    if not batches:
        return
    eager = get_runner(model, "torch")
    art = get_runner(artifact)
    x = artifact.spec.example_input(max(batches), seed=1).numpy()
    ref_all = eager.predict(x)
    # Relative bound: random inputs can give large logits; fp32 rounding stays ~1e-6 of them.
    thr = ParityThresholds(max_rel=1e-4 if artifact.precision == "fp32" else 2e-2)
    if tolerance is not None:
        from edgeopt.export.parity import _thresholds

        user = _thresholds(tolerance, artifact.precision)
        if user.rtol is not None or user.atol is not None:
            thr = ParityThresholds(rtol=user.rtol, atol=user.atol)
    for b in batches:
        try:
            out = art.predict(x[:b])
        except ArtifactError as exc:
            raise ExportMismatchError(f"the exported {artifact.format} file fails at batch size {b}: {exc}") from None
        rep = compare_logits(ref_all[:b], out, thr, precision=artifact.precision, runtime=art.name,
                             fmt=artifact.format, inputs="random")
        if not rep.passed:
            raise ExportMismatchError(f"at batch size {b}: {rep.summary()}")

