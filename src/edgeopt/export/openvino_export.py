"""OpenVINO export: an IR pair ``model.xml`` (graph) + ``model.bin`` (weights).

The artifact is the ``.xml``; its weights live in the ``.bin`` of the same stem beside it
(``edgeopt.artifact.COMPANIONS``), and both count as what you ship (``measure_size``).

Which route into OpenVINO, and why (measured on openvino 2026.4, torch 2.14.1, every zoo
model at 1x8x8, 1 thread): ``source="onnx"`` is the default. ``openvino.convert_model``
then reads the ONNX file edgeopt's own exporter writes (the dynamo exporter by default,
which refuses a model it cannot capture faithfully, see :mod:`edgeopt.export.onnx_export`),
so OpenVINO sees the same graph the ``onnx`` artifact ships and that edgeopt already
verifies, with our input/output names (``input``/``logits``) and a symbolic batch. It is
also the route int8 needs (OpenVINO runs a QDQ ONNX model's quantized ops in int8), and it
was faster: ONNX (legacy tracer) + convert took 1.2-3.7 s per model, ``source="torch"``
1.8-6.1 s. ``source="torch"`` (OpenVINO's PyTorch frontend, which traces the module with
TorchScript) is kept as an option, e.g. for a model the ONNX exporters reject. Both gave
logits within 3e-5 of eager torch on real digits.

Precisions: ``fp32``; ``fp16`` (``save_model(compress_to_fp16=True)``: fp16 weights in the
``.bin``, half the size; the CPU plugin computes in the precision the runner asks for);
``int8`` from an already quantized QDQ ONNX file (``onnx_path=``), e.g. one written by
``onnxruntime.quantization.quantize_static`` (edgeopt's own quantizer comes later).

The pair is written atomically: ``save_model`` writes both files into a private temporary
folder beside the target; the ``.bin`` is renamed into place first and the ``.xml`` last.
Readers open an IR through its ``.xml``, so whoever sees the new ``.xml`` finds its ``.bin``
already there. When an older pair is overwritten, its ``.xml`` is moved away *before* the
new ``.bin`` lands, so no reader pairs an old ``.xml`` with a new ``.bin`` (for that
instant the artifact is absent, which a reader reports as "not found", never as wrong
numbers). The ``.bin``'s size and SHA-256 go into the sidecar, and the runner refuses a
``.bin`` that does not match (truncated, or from another export).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from edgeopt.config import Config
from edgeopt.errors import (
    ConfigError,
    EdgeoptError,
    MissingDependencyError,
    UnsupportedModelError,
    brief,
    require,
)
from edgeopt.spec import ModelSpec

SUFFIX = ".xml"
PRECISIONS = ("fp32", "fp16", "int8")
SOURCES = ("onnx", "torch")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")


def _ov():
    return require("openvino", "openvino", "OpenVINO export")


def openvino_available() -> str | None:
    """None when OpenVINO export and its runtime work here, else why not (the pip command).

    Example:
        >>> openvino_available() is None or "pip install" in openvino_available()
        True
    """
    try:
        _ov()
    except MissingDependencyError as exc:
        return str(exc)
    return None


@dataclasses.dataclass(frozen=True)
class OpenVINOExportConfig(Config):
    """How to export to OpenVINO IR.

    Attributes:
        precision: ``fp32``; ``fp16`` (fp16 weights in the ``.bin``); ``int8`` (needs
            ``onnx_path``: a QDQ-quantized ONNX file).
        source: ``onnx`` (default: convert edgeopt's ONNX export; see the module
            docstring) or ``torch`` (OpenVINO's PyTorch frontend on the module).
        onnx_path: convert this existing ONNX file instead of exporting the model (the
            model is still what parity compares against). Required for ``int8``.
        onnx_dynamo: with ``source="onnx"``, export with torch's dynamo exporter (robust,
            the ONNX default) or the legacy tracer (20-40x faster).
        opset: ONNX opset of that export.
        dynamic_batch: the IR's batch dimension is symbolic (one file serves every batch
            size; the runner still compiles per batch size unless asked not to).
        check_batches: batch sizes run after export and compared with the eager model
            (fp32/fp16), proving the batch dimension really is dynamic.

    Example:
        >>> OpenVINOExportConfig(precision="int8")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ConfigError: OpenVINOExportConfig(precision='int8') needs onnx_path=...
        >>> OpenVINOExportConfig(precision="fp16").source
        'onnx'
    """

    precision: str = "fp32"
    source: str = "onnx"
    onnx_path: str | None = None
    onnx_dynamo: bool = True
    opset: int = 18
    dynamic_batch: bool = True
    check_batches: tuple[int, ...] = (1, 7)

    def validate(self) -> None:
        self._check_choice("precision", PRECISIONS)
        self._check_choice("source", SOURCES)
        if self.precision == "int8" and not self.onnx_path:
            raise ConfigError(
                "OpenVINOExportConfig(precision='int8') needs onnx_path=... : a QDQ-quantized ONNX file "
                "(e.g. from onnxruntime.quantization.quantize_static); edgeopt does not quantize here"
            )
        if self.onnx_path and self.source != "onnx":
            raise ConfigError("OpenVINOExportConfig: onnx_path converts an ONNX file; it needs source='onnx'")
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.check_batches):
            raise ConfigError(f"OpenVINOExportConfig.check_batches={self.check_batches!r} must be integers >= 1")


def _sha256(path: Path) -> str:
    from edgeopt._io import file_sha256

    return file_sha256(path)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def save_ir_atomic(ov_model: Any, out_path: str | Path, *, compress_to_fp16: bool) -> tuple[Path, Path]:
    """Write an ``openvino.Model`` as ``out.xml`` + ``out.bin`` so no reader sees a half pair.

    Both files are written into a temporary folder beside ``out``, flushed, then renamed:
    an existing ``.xml`` is moved away first, the ``.bin`` goes in next and the ``.xml``
    last (readers find an IR through its ``.xml``). See the module docstring.

    Returns:
        ``(xml_path, bin_path)``.

    Example:
        >>> import openvino as ov, numpy as np, tempfile  # doctest: +SKIP
        >>> p = ov.opset13.parameter([1, 4], np.float32)  # doctest: +SKIP
        >>> m = ov.Model([ov.opset13.relu(p)], [p])  # doctest: +SKIP
        >>> save_ir_atomic(m, tempfile.mkdtemp() + "/m.xml", compress_to_fp16=False)[1].suffix  # doctest: +SKIP
        '.bin'
    """
    ov = _ov()
    xml = Path(out_path)
    binf = xml.with_suffix(".bin")
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{xml.name}.", suffix=".tmp", dir=xml.parent))
    try:
        t_xml = tmp / xml.name
        ov.save_model(ov_model, str(t_xml), compress_to_fp16=compress_to_fp16)
        t_bin = t_xml.with_suffix(".bin")
        if not t_bin.is_file():  # a model without constants: OpenVINO still wants a .bin
            t_bin.write_bytes(b"")
        for f in (t_bin, t_xml):
            _fsync(f)
        if xml.exists():  # never let the old .xml meet the new .bin
            os.replace(xml, tmp / "previous.xml")
        os.replace(t_bin, binf)
        os.replace(t_xml, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml, binf


def _is_quantized_onnx(path: Path) -> bool:
    onnx = require("onnx", "dev", "reading an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - DecodeError and friends
        raise ConfigError(f"onnx_path {path} is not a readable ONNX file ({type(exc).__name__})") from None
    return any(n.op_type in _QDQ_OPS for n in proto.graph.node)


def _from_torch(ov: Any, model: Any, spec: ModelSpec, cfg: OpenVINOExportConfig) -> Any:
    import torch

    batch = -1 if cfg.dynamic_batch else 1
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings; failures still raise
        return ov.convert_model(
            model, example_input=spec.example_input(2), input=[ov.PartialShape([batch, *spec.input_shape])]
        )


def export_openvino(model: Any, spec: ModelSpec, out_path: Path, cfg: OpenVINOExportConfig) -> tuple[Any, dict[str, Any]]:
    """Convert ``model`` (or ``cfg.onnx_path``) to an OpenVINO IR pair, atomically.

    Called by ``export_model(model, "openvino", "out/model.xml", config)``, which writes
    the sidecar and checks parity; call that, not this.

    Returns:
        ``(None, meta)``: meta records precision, source, the ``.bin``'s name, size and
        SHA-256, the ONNX export's settings, seconds and versions.

    Raises:
        ConfigError: ``onnx_path`` is missing, unreadable, or its quantization disagrees
            with ``cfg.precision``.
        UnsupportedModelError: OpenVINO cannot convert the model (one line naming why).
    """
    ov = _ov()
    t0 = time.perf_counter()
    onnx_meta: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-ov-") as tmp:
        if cfg.onnx_path:
            src: Any = Path(cfg.onnx_path)
            if not src.is_file():
                raise ConfigError(f"onnx_path {src} does not exist")
            quantized = _is_quantized_onnx(src)
            if quantized != (cfg.precision == "int8"):
                raise ConfigError(
                    f"onnx_path {src.name} is {'a quantized (QDQ)' if quantized else 'a float'} ONNX model "
                    f"but precision={cfg.precision!r}; declare precision={'int8' if quantized else 'fp32'!r}"
                )
            onnx_meta = {"onnx_source": str(src)}
        elif cfg.source == "onnx":
            from edgeopt.export.onnx_export import OnnxExportConfig, export_onnx

            ocfg = OnnxExportConfig(dynamo=cfg.onnx_dynamo, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch)
            src = Path(tmp) / "model.onnx"
            _, m = export_onnx(model, spec, src, ocfg)
            onnx_meta = {"opset": m["opset"], "onnx_exporter": m["exporter"]}
        try:
            if cfg.source == "torch":
                ov_model = _from_torch(ov, model, spec, cfg)
            else:
                ov_model = ov.convert_model(str(src))
        except EdgeoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises OpConversionFailure, RuntimeError, ...
            msg = brief(exc)
            raise UnsupportedModelError(
                f"OpenVINO cannot convert {type(model).__name__} (source={cfg.source}): {type(exc).__name__}: {msg}"
            ) from None

    if len(ov_model.inputs) != 1 or len(ov_model.outputs) != 1:
        raise UnsupportedModelError(
            f"the OpenVINO model has {len(ov_model.inputs)} inputs and {len(ov_model.outputs)} outputs; "
            f"edgeopt exports single-input, single-output image classifiers"
        )
    pshape = ov_model.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in pshape] if pshape.rank.is_static else []
    if len(dims) != 4 or tuple(dims[1:]) != tuple(spec.input_shape):
        raise UnsupportedModelError(f"the OpenVINO model takes input {pshape}, the ModelSpec [N, {spec.input_shape}]")
    # the same names whichever route was taken, so a user's code can feed "input"
    ov_model.inputs[0].get_tensor().set_names({"input"})
    ov_model.outputs[0].get_tensor().set_names({"logits"})

    _, binf = save_ir_atomic(ov_model, out_path, compress_to_fp16=cfg.precision == "fp16")
    seconds = time.perf_counter() - t0
    meta = {
        "precision": cfg.precision,  # export_model takes the artifact's precision from here
        "exporter": f"openvino.convert_model({cfg.source})",
        "route": cfg.source,  # "source" is the model's architecture (set by export_model)
        **onnx_meta,
        "input_name": "input",
        "output_name": "logits",
        "dynamic_batch": dims[0] is None,
        "weights_file": binf.name,
        "weights_bytes": binf.stat().st_size,
        "weights_sha256": _sha256(binf),
        "export_seconds": round(seconds, 3),
        "versions": {"openvino": str(ov.get_version())},
        "config": cfg.to_dict(),
    }
    return None, meta


def check_openvino(model: Any, artifact: Any, cfg: OpenVINOExportConfig) -> None:
    """After export: fp32/fp16 files at each ``cfg.check_batches`` size agree with eager.

    int8 is left to the parity check on real images (random inputs push an int8 model
    outside its calibrated ranges, so a tight bound there would test the wrong thing).

    Raises:
        ExportMismatchError: a batch size fails or gives other logits than eager torch.
    """
    from edgeopt.export.onnx_export import check_batch_sizes

    if cfg.precision != "int8" and cfg.dynamic_batch:
        check_batch_sizes(model, artifact, cfg.check_batches)


def openvino_from_onnx(onnx_path: str | Path, out_path: str | Path, spec: ModelSpec, *, precision: str | None = None) -> Any:
    """Convert an existing ONNX file (fp32 or QDQ int8) to an IR pair with a sidecar.

    For when there is no PyTorch model at hand (so no parity check: use
    ``export_model(model, "openvino", out, OpenVINOExportConfig(onnx_path=...))`` when there
    is one). The precision is read from the file (QDQ nodes -> ``int8``) unless given.

    Args:
        onnx_path: the ONNX file.
        out_path: the ``.xml`` to write (the ``.bin`` goes beside it).
        spec: the ModelSpec of the model inside (input shape, mean/std, classes).
        precision: ``fp32``, ``fp16`` or ``int8``; None: ``int8`` for a QDQ file, else ``fp32``.

    Returns:
        The :class:`~edgeopt.artifact.Artifact` (``parity`` recorded as not run).

    Example:
        >>> art = openvino_from_onnx("model_int8.onnx", "out/model_int8.xml", spec)  # doctest: +SKIP
        >>> art.precision, [f.name for f in art.files()]  # doctest: +SKIP
        ('int8', ['model_int8.xml', 'model_int8.bin'])
    """
    from edgeopt.artifact import Artifact

    out = Path(out_path)
    if out.suffix.lower() != SUFFIX:
        raise ConfigError(f"OpenVINO export writes a '{SUFFIX}' file, got out_path {out}")
    if precision is None:
        precision = "int8" if Path(onnx_path).is_file() and _is_quantized_onnx(Path(onnx_path)) else "fp32"
    cfg = OpenVINOExportConfig(precision=precision, onnx_path=str(onnx_path))
    _, meta = export_openvino(None, spec, out, cfg)
    meta.pop("precision")
    meta["lineage"] = [{"step": "export", "format": "openvino", "exporter": meta["exporter"]}]
    meta["parity"] = {"status": "not run", "reason": "no PyTorch model to compare with"}
    art = Artifact(out, "openvino", spec, precision, meta)
    art.save_sidecar()
    return art
