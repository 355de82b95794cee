"""The EXPORTERS registry and :func:`export_model`, the one entry point for every format."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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


#: format name -> Exporter
EXPORTERS: Registry = Registry("export format")


def _register_builtin() -> None:
    from edgeopt.export import onnx_export as ox

    EXPORTERS.add(
        "onnx",
        Exporter(
            "onnx", ".onnx", ox.OnnxExportConfig, ox.export_onnx,
            check=lambda model, art, cfg: ox.check_batch_sizes(model, art, cfg.check_batches if cfg.dynamic_batch else ()),
            precision=ox._precision_of_model,
        ),
        help="ONNX (one self-contained file, dynamic batch), run by onnxruntime",
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


def export_model(
    model: Any,
    fmt: str,
    out_path: str | Path,
    config: Any = None,
    *,
    samples: Any = None,
    verify: bool = True,
    tolerance: Any = None,
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
        samples: normalised float32 images ``[N, C, H, W]`` (or an ``(x, y)`` pair) for
            the parity check; use real held-out images.
        verify: check parity and raise ExportMismatchError on failure. False: parity is
            still measured when ``samples`` are given (never raises), else skipped.
        tolerance: override the precision's parity thresholds (see ``verify_parity``).

    Returns:
        ``ExportResult(artifact, parity)``; the parity report is also in the sidecar
        (``artifact.meta["parity"]``).

    Raises:
        ConfigError: unknown format, bad config, wrong suffix, model without ModelSpec.
        UnsupportedModelError: the exporter cannot handle a layer (the message names it).
        ExportMismatchError: the artifact's outputs differ beyond tolerance (the message
            names the worst sample); the file and sidecar are removed.

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
    cfg = _config_for(exporter, config)
    spec = get_spec(model)
    out = _out_path(out_path, exporter.suffix, fmt)
    precision = exporter.precision(model) if exporter.precision else "fp32"

    was_training = getattr(model, "training", False)
    model.eval()  # BN running stats and no dropout: what gets deployed
    try:
        _, meta = exporter.export(model, spec, out, cfg)
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
                exporter.check(model, artifact, cfg)
            parity = None
            if verify or samples is not None:
                inputs = "real"
                if samples is None:
                    samples, inputs = spec.example_input(32, seed=2), "random"
                parity = verify_parity(model, artifact, samples, tolerance, inputs=inputs)
                artifact.meta["parity"] = parity.to_dict()
                artifact.save_sidecar()
                if verify:
                    parity.raise_if_failed()
        except ExportMismatchError as exc:
            # A file that computes something else must not look like a finished step.
            for p in (out, sidecar_path(out)):
                p.unlink(missing_ok=True)
            raise ExportMismatchError(
                f"{exc} (removed {out.name}; export with verify=False to keep it for debugging)"
            ) from None
    finally:
        model.train(was_training)
    return ExportResult(artifact, parity)
