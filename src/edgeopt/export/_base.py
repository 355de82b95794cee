"""The EXPORTERS registry and :func:`export_model`, the one entry point for every format."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._outputs import ensure_writable_file
from edgeopt.artifact import Artifact, sidecar_path
from edgeopt.config import Config
from edgeopt.errors import ConfigError, ExportMismatchError
from edgeopt.export.parity import ParityReport, verify_parity
from edgeopt.registry import Registry
from edgeopt.spec import get_spec


@dataclasses.dataclass(frozen=True)
class Exporter:
    """One export format: its config class, file suffix and export function.

    ``export(model, spec, out_path, config) -> (anything, meta dict)`` writes the file
    atomically; ``check(model, artifact, config)`` (optional) runs format-specific checks
    after the sidecar is written (ONNX: batch sizes 1 and 7).
    """

    name: str
    suffix: str
    config_cls: type[Config]
    export: Any
    check: Any = None
    precision: Any = None  # model -> precision string
    #: ``() -> None | str``: None when this format can be exported here, else the reason
    #: (the MissingDependencyError text); None (the field) means always available.
    available: Any = None
    #: ``() -> dict[str, dict]``: extra named config variants that ``compare_runtimes``
    #: measures as separate rows (ONNX: one per ORT optimization level); None: none.
    variants: Any = None
    #: the export function takes ``calibration=`` (real images for int8 calibration)
    takes_calibration: bool = False
    #: ``check`` takes ``tolerance=`` (the user's parity tolerance) as a fourth argument
    check_takes_tolerance: bool = False
    #: ``() -> None | str``: None when the artifact can run on this machine, else why not
    #: (Core ML predicts only on macOS); export_model then records parity as "not run".
    runnable: Any = None


#: format name -> Exporter
EXPORTERS: Registry = Registry("export format")


def _register_builtin() -> None:
    from edgeopt.export import onnx_export as ox

    EXPORTERS.add(
        "onnx",
        Exporter(
            "onnx", ".onnx", ox.OnnxExportConfig, ox.export_onnx,
            check=lambda model, art, cfg, tolerance=None: ox.check_batch_sizes(
                model, art, cfg.check_batches if cfg.dynamic_batch else (), tolerance),
            check_takes_tolerance=True,
            precision=ox._precision_of_model,
            available=ox.onnx_available,
            variants=lambda: {f"onnx-{lv}": {"optimization": lv} for lv in ox.ORT_LEVELS if lv != "none"},
        ),
        help="ONNX (one self-contained file, dynamic batch), run by onnxruntime",
    )
    from edgeopt.export import torchscript_export as tsx

    EXPORTERS.add(
        "torchscript",
        Exporter("torchscript", tsx.SUFFIX, tsx.TorchScriptExportConfig, tsx.export_torchscript,
                 precision=ox._precision_of_model),
        help="TorchScript (.torchscript: traced or scripted, frozen), run by torch.jit / LibTorch",
    )
    from edgeopt.export import tflite_export as tfx

    EXPORTERS.add(
        "tflite",
        Exporter("tflite", tfx.SUFFIX, tfx.TFLiteExportConfig, tfx.export_tflite,
                 available=tfx.tflite_available, takes_calibration=True),
        help="TFLite (.tflite via litert-torch: fp32, fp16 or int8, NCHW input), run by LiteRT (extra 'tflite')",
    )
    from edgeopt.export import coreml_export as cmx
    from edgeopt.export import openvino_export as ovx
    from edgeopt.export import tensorrt_export as trx

    EXPORTERS.add(
        "openvino",
        Exporter("openvino", ovx.SUFFIX, ovx.OpenVINOExportConfig, ovx.export_openvino,
                 check=ovx.check_openvino, available=ovx.openvino_available),
        help="OpenVINO IR (.xml + .bin; fp32, fp16, or int8 from a QDQ ONNX file), run by OpenVINO (extra 'openvino')",
    )
    EXPORTERS.add(
        "coreml",
        Exporter("coreml", cmx.SUFFIX, cmx.CoreMLExportConfig, cmx.export_coreml,
                 available=cmx.coreml_available, runnable=cmx.coreml_runnable),
        help="Core ML ML Program (.mlpackage; fp32, fp16, int8 weights), validated; predicts on macOS only (extra 'coreml')",
    )
    EXPORTERS.add(
        "tensorrt",
        Exporter("tensorrt", trx.SUFFIX, trx.TensorRTExportConfig, trx.export_tensorrt,
                 available=trx.tensorrt_available),
        help="TensorRT engine (.engine; fp32, fp16) built on a CUDA GPU (extra 'tensorrt')",
    )


_register_builtin()


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_model` returns: the artifact and, when checked, its parity."""

    artifact: Artifact
    parity: ParityReport | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": str(self.artifact.path),
            "format": self.artifact.format,
            "precision": self.artifact.precision,
            "parity": self.parity.to_dict() if self.parity is not None else None,
        }


def list_formats() -> list[str]:
    """Names of the registered export formats.

    Example:
        >>> "onnx" in list_formats()
        True
    """
    return EXPORTERS.names()


def _config_for(exporter: Exporter, config: Any) -> Config:
    if config is None:
        return exporter.config_cls()
    if isinstance(config, exporter.config_cls):
        return config
    if isinstance(config, dict):
        return exporter.config_cls.from_dict(config)
    raise ConfigError(
        f"{exporter.name} export takes a {exporter.config_cls.__name__} or a dict, got {type(config).__name__}"
    )


def _out_path(out_path: Any, suffix: str, fmt: str) -> Path:
    p = Path(out_path)
    if p.suffix == "":
        return p.with_name(p.name + suffix)
    if p.suffix.lower() != suffix:
        raise ConfigError(f"{fmt} export writes a '{suffix}' file, got out_path {p}")
    return p


def split_parity_config(config: Any, tolerance: Any = None) -> tuple[Any, Any]:
    """Take ``"parity"`` out of an export config dict: ``(format config, tolerance)``.

    ``tolerance`` given explicitly wins over the config's; both dicts are merged (the
    explicit one on top).

    Example:
        >>> split_parity_config({"opset": 17, "parity": {"rtol": 1e-4}})
        ({'opset': 17}, {'rtol': 0.0001})
    """
    if not isinstance(config, dict) or "parity" not in config:
        return config, tolerance
    config = dict(config)
    from_config = config.pop("parity")
    if from_config is not None and not isinstance(from_config, dict):
        raise ConfigError(f"export config 'parity' must be a mapping like {{'rtol': 1e-5, 'atol': 1e-4}}, "
                          f"got {from_config!r}")
    if tolerance is None:
        return config, from_config
    if isinstance(tolerance, dict) and from_config:
        return config, {**from_config, **tolerance}
    return config, tolerance


def _check_finite(model: Any, fmt: str, samples: Any) -> None:
    """NaN/Inf in the weights, or in the eager outputs on the given samples, is a
    NumericalError before anything is exported: a parity check would otherwise report it
    as an export mismatch (NaN differs from everything)."""
    import torch

    from edgeopt.errors import NumericalError
    from edgeopt.export.parity import _as_samples
    from edgeopt.models.weights import check_finite_weights

    if not isinstance(model, torch.nn.Module):
        return
    check_finite_weights(model, f"export to {fmt}")
    if samples is None:
        return
    x = torch.from_numpy(np.ascontiguousarray(_as_samples(samples)[:8], dtype=np.float32))
    try:
        with torch.no_grad():
            y = model(x)
    except Exception:  # noqa: BLE001 - a model that cannot run is reported by the exporter itself
        return
    if isinstance(y, torch.Tensor) and y.is_floating_point() and not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).any(dim=-1).sum()) if y.dim() > 1 else 1
        raise NumericalError(
            f"cannot export to {fmt}: the PyTorch model itself outputs NaN/Inf on {bad} of the first "
            f"{len(x)} samples (its weights are finite: an overflow inside the model); fix the "
            f"model before exporting"
        )


def export_model(
    model: Any,
    fmt: str,
    out_path: str | Path,
    config: Any = None,
    *,
    samples: Any = None,
    verify: bool = True,
    tolerance: Any = None,
    calibration: Any = None,
) -> ExportResult:
    """Export ``model`` to ``fmt``, write its sidecar, and check it against the model.

    The model is exported in eval mode (its train/eval flag is restored afterwards). The
    file is written atomically and is self-contained. With ``verify=True`` the artifact
    is compared with the eager model on ``samples`` (or, when None, on 32 normal-random
    inputs of the spec, recorded as ``inputs="random"`` in the report); a failure raises.

    Args:
        model: an ``nn.Module`` carrying a ModelSpec (``edgeopt.models.create_model``).
        fmt: one of :func:`list_formats`, e.g. ``"onnx"``.
        out_path: the file to write (the suffix is added when missing).
        config: the format's config (``OnnxExportConfig``), a dict of its fields, or None.
            A dict may hold ``"parity": {"rtol": ..., "atol": ...}`` (the same as
            ``tolerance``), so a YAML export config can set the parity tolerance too.
        samples: normalised float32 images ``[N, C, H, W]`` (or an ``(x, y)`` pair) for
            the parity check; use real held-out images.
        verify: check parity and raise ExportMismatchError on failure. False: parity is
            still measured when ``samples`` are given (never raises), else skipped.
        tolerance: override the precision's parity thresholds (see ``verify_parity``;
            ``{"rtol": 1e-4}`` changes only the relative tolerance).
        calibration: normalised float32 training images ``[N, C, H, W]``
            (``DataModule.calibration(n)``) for formats that calibrate a quantized file
            (``tflite`` int8); ignored by the others.

    Returns:
        ``ExportResult(artifact, parity)``; the parity report is also in the sidecar
        (``artifact.meta["parity"]``).

    Raises:
        ConfigError: unknown format, bad config, wrong suffix, model without ModelSpec,
            an ``out_path`` under a file or in a folder that cannot be written.
        OutputError: the disk filled up or became read-only while writing (no partial file).
        UnsupportedModelError: the exporter cannot handle a layer (the message names it).
        NumericalError: a weight or buffer holds NaN/Inf (named), or the eager model
            outputs NaN/Inf on ``samples``; nothing is written.
        ExportMismatchError: the artifact's outputs differ beyond tolerance (the message
            names the worst sample, the figures and where the file is). The file is kept,
            marked ``"status": "parity failed"`` in its sidecar, for debugging.

    Example:
        >>> import tempfile, torch
        >>> from edgeopt.spec import ModelSpec, attach_spec
        >>> m = attach_spec(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
        ...                 ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)))
        >>> res = export_model(m, "onnx", tempfile.mkdtemp() + "/m.onnx",
        ...                    {"dynamo": False, "opset": 17})
        >>> res.artifact.format, res.parity.passed
        ('onnx', True)
    """
    exporter: Exporter = EXPORTERS.get(fmt)
    config, tolerance = split_parity_config(config, tolerance)
    cfg = _config_for(exporter, config)
    spec = get_spec(model)
    out = _out_path(out_path, exporter.suffix, fmt)
    ensure_writable_file(out, "output file", allow_dir=True)  # before the conversion, not after
    precision = exporter.precision(model) if exporter.precision else "fp32"

    was_training = getattr(model, "training", False)
    model.eval()  # BN running stats and no dropout: what gets deployed
    try:
        _check_finite(model, fmt, samples)  # NaN weights are not an export mismatch
        extra = {"calibration": calibration} if exporter.takes_calibration else {}
        _, meta = exporter.export(model, spec, out, cfg, **extra)
        precision = meta.pop("precision", precision)  # set by exporters whose config picks it
        arch = getattr(model, "edgeopt_arch", None)
        lineage = list(getattr(model, "edgeopt_lineage", None) or [])
        step = {"step": "export", "format": fmt}
        step.update({k: meta[k] for k in ("opset", "exporter") if k in meta})
        meta = {
            **meta,
            "source": {"arch": arch, "class": type(model).__name__},
            "lineage": lineage + [step],
        }
        artifact = Artifact(out, fmt, spec, precision, meta)
        artifact.save_sidecar()
        try:
            if exporter.check is not None and verify:
                if exporter.check_takes_tolerance:
                    exporter.check(model, artifact, cfg, tolerance)
                else:
                    exporter.check(model, artifact, cfg)
            parity = None
            not_run = exporter.runnable() if exporter.runnable is not None else None
            if not_run is not None:  # recorded, never reported as a pass
                artifact.meta["parity"] = {"status": "not run", "reason": not_run}
                artifact.save_sidecar()
            elif verify or samples is not None:
                inputs = "real"
                if samples is None:
                    samples, inputs = spec.example_input(32, seed=2), "random"
                parity = verify_parity(model, artifact, samples, tolerance, inputs=inputs)
                artifact.meta["parity"] = parity.to_dict()
                artifact.save_sidecar()
                if verify:
                    parity.raise_if_failed()
        except ExportMismatchError as exc:
            # Kept for debugging (a rounding difference judged wrongly must not cost the file),
            # but marked, so it does not look like a checked export.
            if not isinstance(artifact.meta.get("parity"), dict) or "passed" not in artifact.meta["parity"]:
                artifact.meta["parity"] = {"passed": False, "status": "failed", "reason": str(exc)}
            artifact.meta["status"] = "parity failed"
            artifact.save_sidecar()
            raise ExportMismatchError(
                f"{exc}; kept {out} (marked 'parity failed' in {sidecar_path(out).name}); if this is "
                f"float rounding, loosen the tolerance (--rtol/--atol, tolerance={{'rtol': ...}})"
            ) from None
    finally:
        model.train(was_training)
    return ExportResult(artifact, parity)
