"""Artifacts: deployable files (an ONNX file, a checkpoint) with a JSON sidecar.

An :class:`Artifact` is the file you would ship plus what a Runner needs to run it
without guessing: its format, numeric precision, the :class:`~edgeopt.spec.ModelSpec`
(input shape, normalisation, classes) and metadata (lineage of steps, opset, exporter,
parity report). The metadata lives beside the file in ``FILE.edgeopt.json``, e.g.
``model.onnx`` -> ``model.onnx.edgeopt.json``.

Formats are detected from the suffix:

* ``.onnx``        -> ``"onnx"`` (run by the ``onnxruntime`` runner)
* ``.safetensors`` -> ``"checkpoint"``: an edgeopt checkpoint (``NAME.safetensors`` +
  ``NAME.json``, see :mod:`edgeopt.models.checkpoint`), run eagerly by the ``torch`` runner.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

from edgeopt._io import write_json_atomic
from edgeopt.errors import ArtifactError, ConfigError, brief
from edgeopt.spec import ModelSpec

SIDECAR_SUFFIX = ".edgeopt.json"
SIDECAR_KIND = "edgeopt_artifact"  # marks a sidecar as ours (a foreign JSON is refused)
SIDECAR_VERSION = 1
ONNX_SPEC_KEY = "edgeopt.spec"  # ONNX metadata_props key holding the ModelSpec as JSON

#: suffix -> format name
FORMATS: dict[str, str] = {".onnx": "onnx", ".safetensors": "checkpoint"}
#: format -> the runtime that runs it by default
DEFAULT_RUNTIME: dict[str, str] = {"onnx": "onnxruntime", "checkpoint": "torch"}
# TorchScript: ".torchscript", not ".pt" (a .pt here is a weights-only torch.load file)
FORMATS[".torchscript"] = "torchscript"
DEFAULT_RUNTIME["torchscript"] = "torchscript"
# TFLite: written by litert-torch, run by the LiteRT interpreter (runtime "litert")
FORMATS[".tflite"] = "tflite"
DEFAULT_RUNTIME["tflite"] = "litert"
# OpenVINO IR: the artifact is the .xml; its weights live in the .bin beside it (COMPANIONS)
FORMATS[".xml"] = "openvino"
DEFAULT_RUNTIME["openvino"] = "openvino"
# Core ML: an .mlpackage *directory* (DIRECTORY_FORMATS); predicts only on macOS
FORMATS[".mlpackage"] = "coreml"
DEFAULT_RUNTIME["coreml"] = "coreml"
# TensorRT: a serialized engine, tied to the GPU model and TensorRT version that built it
FORMATS[".engine"] = "tensorrt"
DEFAULT_RUNTIME["tensorrt"] = "tensorrt"
# torch.export program (.pt2, torch.export.save): PT2E int8 from the torch quantization
# backend (engine pt2e-x86), run by the "torch_export" runner after inductor lowering
FORMATS[".pt2"] = "torch_export"
DEFAULT_RUNTIME["torch_export"] = "torch_export"
#: suffix -> suffixes of files that ship with the artifact (same stem, same folder)
COMPANIONS: dict[str, tuple[str, ...]] = {".xml": (".bin",)}
#: formats whose artifact is a folder, not a file
DIRECTORY_FORMATS: set[str] = {"coreml"}
#: numeric precisions an artifact may declare (they pick the parity thresholds)
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "mixed")


class ArtifactWarning(UserWarning):
    """An artifact was loaded with guessed metadata (e.g. an ONNX file without sidecar)."""


def sidecar_path(path: str | Path) -> Path:
    """The sidecar of an artifact file: ``FILE`` -> ``FILE.edgeopt.json``.

    Example:
        >>> sidecar_path("out/model.onnx").name
        'model.onnx.edgeopt.json'
    """
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def detect_format(path: str | Path) -> str:
    """The artifact format of a file, from its suffix.

    Raises:
        ArtifactError: the suffix is not a known artifact format.

    Example:
        >>> detect_format("model.onnx"), detect_format("best.safetensors")
        ('onnx', 'checkpoint')
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".pth", ".pt", ".th", ".bin", ".ckpt"):  # weights trained elsewhere
        raise ArtifactError(
            f"{path} is not an edgeopt checkpoint or artifact; bring it in first: edgeopt import "
            f"{path} --model ARCH --preset imagenet|cifar10 (see edgeopt import --help)"
        )
    try:
        return FORMATS[suffix]
    except KeyError:
        raise ArtifactError(
            f"{path}: unknown artifact format '{suffix or '(no suffix)'}'; "
            f"known suffixes: {', '.join(sorted(FORMATS))}"
        ) from None


@dataclasses.dataclass
class Artifact:
    """A deployable file and what is known about it.

    Attributes:
        path: the file (``.onnx``, ``.safetensors``).
        format: ``"onnx"`` or ``"checkpoint"`` (see :data:`FORMATS`).
        spec: the ModelSpec of the model inside (input shape, mean/std, classes).
        precision: ``fp32``, ``fp16``, ``bf16``, ``int8`` or ``mixed``; picks the parity
            thresholds (:mod:`edgeopt.export.parity`).
        meta: free-form JSON metadata: ``lineage`` (list of steps), ``opset``,
            ``exporter``, ``source`` (architecture), ``parity`` (report), versions.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
        >>> _ = p.write_bytes(b"")  # any file; a real one comes from export_model
        >>> spec = ModelSpec((1, 8, 8), 10, (0.5,), (0.25,))
        >>> _ = Artifact(p, "onnx", spec, meta={"lineage": [{"step": "export"}]}).save_sidecar()
        >>> Artifact.load(p).meta["lineage"]
        [{'step': 'export'}]
    """

    path: Path
    format: str
    spec: ModelSpec
    precision: str = "fp32"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.format not in DEFAULT_RUNTIME:
            raise ConfigError(
                f"Artifact.format={self.format!r} must be one of {', '.join(DEFAULT_RUNTIME)}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"Artifact.precision={self.precision!r} must be one of {', '.join(PRECISIONS)}"
            )
        if not isinstance(self.spec, ModelSpec):
            raise ConfigError(f"Artifact.spec must be a ModelSpec, got {type(self.spec).__name__}")
        self.meta = dict(self.meta or {})

    # -- derived -------------------------------------------------------------------------
    @property
    def sidecar_path(self) -> Path:
        """``FILE.edgeopt.json`` beside the file."""
        return sidecar_path(self.path)

    @property
    def default_runtime(self) -> str:
        """The runtime that runs this format when none is asked for."""
        return DEFAULT_RUNTIME[self.format]

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of everything you ship (:meth:`files`, summed)."""
        return sum(f.stat().st_size for f in self.files())

    def files(self) -> list[Path]:
        """The files that make up the artifact: ``path``, its companions, or a folder's files.

        An OpenVINO ``model.xml`` ships with ``model.bin``; a Core ML ``.mlpackage`` is a
        folder. The sidecar is metadata and is not listed.

        Example:
            >>> [f.name for f in artifact_files("missing/model.xml")]
            ['model.xml', 'model.bin']
        """
        return artifact_files(self.path)

    def to_dict(self) -> dict[str, Any]:
        """The sidecar content (JSON-ready)."""
        return {
            "kind": SIDECAR_KIND,
            "version": SIDECAR_VERSION,
            "file": self.path.name,
            "format": self.format,
            "precision": self.precision,
            "spec": self.spec.to_dict(),
            "meta": self.meta,
        }

    # -- io ------------------------------------------------------------------------------
    def save_sidecar(self) -> Path:
        """Write ``FILE.edgeopt.json`` atomically and return its path.

        Raises:
            ArtifactError: the artifact file does not exist (a sidecar must describe a
                file that is there), or ``meta`` is not JSON-serialisable.
        """
        if not (self.path.is_file() or (self.format in DIRECTORY_FORMATS and self.path.is_dir())):
            raise ArtifactError(f"cannot write a sidecar for {self.path}: the file does not exist")
        try:
            json.dumps(self.meta, default=_json_probe)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact meta of {self.path} is not JSON-serialisable: {exc}") from None
        return write_json_atomic(self.sidecar_path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        """Load an artifact's description from its sidecar.

        ``FILE.edgeopt.json`` is read when present. Without it, an ``.onnx`` file is still
        accepted: the ModelSpec is read from the file's metadata (edgeopt writes it
        there) or, failing that, guessed from the graph's input/output shapes with mean 0
        and std 1 (an :class:`ArtifactWarning` says so). A ``.safetensors`` checkpoint
        without ``.edgeopt.json`` uses its checkpoint sidecar ``NAME.json``.

        Args:
            path: the artifact file (not the sidecar).

        Returns:
            The Artifact.

        Raises:
            ArtifactError: the file is missing, its suffix is unknown, the sidecar is
                unreadable, foreign or disagrees with the file, or a sidecar-less ONNX
                file is corrupt or has no static (C, H, W) input.

        Example:
            >>> Artifact.load("does/not/exist.onnx")  # doctest: +IGNORE_EXCEPTION_DETAIL
            Traceback (most recent call last):
            edgeopt.errors.ArtifactError: artifact not found: does/not/exist.onnx
        """
        p = Path(path)
        if p.name.endswith(SIDECAR_SUFFIX):
            raise ArtifactError(f"{p} is a sidecar; load the artifact file it describes instead")
        if not (p.is_file() or (p.is_dir() and FORMATS.get(p.suffix.lower()) in DIRECTORY_FORMATS)):
            raise ArtifactError(f"artifact not found: {p}")
        fmt = detect_format(p)
        side = sidecar_path(p)
        if side.is_file():
            return cls._from_sidecar(p, fmt, side)
        if fmt == "torchscript":
            return cls._from_torchscript_file(p)
        if fmt == "tflite":  # the flatbuffer holds no ModelSpec (normalisation, classes)
            raise ArtifactError(
                f"{p} has no sidecar {sidecar_path(p).name}; re-export it with "
                f"edgeopt.export.export_model(model, 'tflite', path)"
            )
        if fmt in ("openvino", "coreml", "tensorrt"):  # their files hold no edgeopt ModelSpec
            raise ArtifactError(
                f"{p} has no sidecar {sidecar_path(p).name}; re-export it with "
                f"edgeopt.export.export_model(model, '{fmt}', path)"
            )
        if fmt == "torch_export":  # precision and quantized engine live in the sidecar only
            raise ArtifactError(
                f"{p} has no sidecar {sidecar_path(p).name}; rebuild it with "
                f"edgeopt.quantize.quantize(model, QuantConfig(backend='torch', engine='pt2e-x86'), data, path)"
            )
        if fmt == "onnx":
            return cls._from_onnx_file(p)
        return cls._from_checkpoint(p)

    @classmethod
    def _from_sidecar(cls, p: Path, fmt: str, side: Path) -> Artifact:
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            msg = brief(exc, None)
            raise ArtifactError(f"cannot read sidecar {side}: {msg}; re-export the artifact") from None
        if not isinstance(data, dict) or data.get("kind") != SIDECAR_KIND:
            raise ArtifactError(
                f"{side} is not an edgeopt artifact sidecar (no \"kind\": \"{SIDECAR_KIND}\"); "
                f"remove it or re-export the artifact"
            )
        if data.get("format") != fmt:
            raise ArtifactError(
                f"{side} describes a '{data.get('format')}' artifact but {p.name} is '{fmt}'; "
                f"the sidecar belongs to another file"
            )
        if data.get("file") not in (None, p.name):
            # A renamed pair is fine; say so once so a mix-up is visible.
            warnings.warn(
                f"{side.name} was written for '{data.get('file')}', now beside '{p.name}'",
                ArtifactWarning,
                stacklevel=3,
            )
        try:
            spec = ModelSpec.from_dict(data.get("spec") or {})
            return cls(p, fmt, spec, str(data.get("precision", "fp32")), dict(data.get("meta") or {}))
        except ConfigError as exc:
            raise ArtifactError(f"invalid sidecar {side}: {exc}") from None

    @classmethod
    def _from_onnx_file(cls, p: Path) -> Artifact:
        from edgeopt.errors import require

        onnx = require("onnx", "dev", "reading an ONNX artifact")
        try:
            # load_external_data=False: only the graph is needed, and a missing .data
            # file must not make a shape lookup fail.
            proto = onnx.load(str(p), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends
            msg = brief(exc, 200)
            raise ArtifactError(f"{p} is not a readable ONNX file ({type(exc).__name__}: {msg}); re-export it") from None
        meta_props = {m.key: m.value for m in proto.metadata_props}
        if ONNX_SPEC_KEY in meta_props:
            try:
                spec = ModelSpec.from_dict(json.loads(meta_props[ONNX_SPEC_KEY]))
                warnings.warn(
                    f"{p.name} has no sidecar {sidecar_path(p).name}; read its ModelSpec from the "
                    f"ONNX metadata (lineage and parity are unknown)",
                    ArtifactWarning,
                    stacklevel=3,
                )
                return cls(p, "onnx", spec, _precision_of(proto), {"guessed_from": "onnx metadata"})
            except (ConfigError, json.JSONDecodeError):
                pass  # fall through to the shapes
        spec = _spec_from_onnx_shapes(proto, p)
        warnings.warn(
            f"{p.name} has no sidecar {sidecar_path(p).name}; guessed input {spec.input_shape} and "
            f"{spec.num_classes} classes from the graph, with mean 0 and std 1 (feed inputs "
            f"normalised as the model was trained)",
            ArtifactWarning,
            stacklevel=3,
        )
        return cls(p, "onnx", spec, _precision_of(proto), {"guessed_from": "onnx graph shapes"})

    @classmethod
    def _from_torchscript_file(cls, p: Path) -> Artifact:
        from edgeopt.export.torchscript_export import read_embedded_spec

        spec = read_embedded_spec(p)  # reads the zip entry only; runs none of the archive's code
        if spec is None:
            raise ArtifactError(
                f"{p} has no sidecar {sidecar_path(p).name} and no embedded edgeopt ModelSpec; "
                f"export it with edgeopt.export.export_model(model, 'torchscript', path)"
            )
        warnings.warn(
            f"{p.name} has no sidecar {sidecar_path(p).name}; read its ModelSpec from the archive "
            f"(lineage and parity are unknown)",
            ArtifactWarning,
            stacklevel=3,
        )
        return cls(p, "torchscript", spec, "fp32", {"guessed_from": "torchscript extra file"})

    @classmethod
    def _from_checkpoint(cls, p: Path) -> Artifact:
        ckpt_side = p.with_name(p.name[: -len(p.suffix)] + ".json")
        if not ckpt_side.is_file():
            raise ArtifactError(
                f"{p} has neither {sidecar_path(p).name} nor a checkpoint sidecar {ckpt_side.name}; "
                f"save it with edgeopt.models.save_checkpoint"
            )
        try:
            data = json.loads(ckpt_side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"cannot read {ckpt_side}: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
            raise ArtifactError(f"{ckpt_side} is not an edgeopt checkpoint sidecar (it records no ModelSpec)")
        try:
            spec = ModelSpec.from_dict(data["spec"])
        except ConfigError as exc:
            raise ArtifactError(f"invalid ModelSpec in {ckpt_side}: {exc}") from None
        meta = {"lineage": list(data.get("lineage") or []), "source": {"arch": data.get("arch")}}
        return cls(p, "checkpoint", spec, "fp32", meta)


def artifact_files(path: str | Path) -> list[Path]:
    """The files an artifact at ``path`` consists of (see :meth:`Artifact.files`).

    A file plus its :data:`COMPANIONS` (listed whether or not they exist yet, so a missing
    ``.bin`` shows up as an error where it is read); a folder: its files, sorted, sidecars
    excluded.

    Example:
        >>> [f.name for f in artifact_files("out/model.onnx")]
        ['model.onnx']
    """
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not f.name.endswith(SIDECAR_SUFFIX))
    return [p] + [p.with_suffix(s) for s in COMPANIONS.get(p.suffix.lower(), ())]


def _json_probe(obj: Any) -> Any:
    from edgeopt._io import _json_default

    return _json_default(obj)


def _precision_of(proto: Any) -> str:
    """fp16 if the graph input is float16, int8 if it holds QuantizeLinear nodes, else fp32."""
    import onnx

    inputs = _graph_inputs(proto)
    if inputs and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
        return "fp16"
    if any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger") for n in proto.graph.node):
        return "int8"
    return "fp32"


def _graph_inputs(proto: Any) -> list[Any]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _spec_from_onnx_shapes(proto: Any, p: Path) -> ModelSpec:
    inputs = _graph_inputs(proto)
    if len(inputs) != 1 or len(proto.graph.output) < 1:
        raise ArtifactError(
            f"{p} has {len(inputs)} inputs; edgeopt runs image classifiers with one NCHW input "
            f"(write a sidecar with Artifact(...).save_sidecar() for anything else)"
        )
    in_dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.output[0].type.tensor_type.shape.dim]
    if len(in_dims) != 4 or any(d is None or d <= 0 for d in in_dims[1:]):
        raise ArtifactError(f"{p}: input shape {in_dims} is not NCHW with static C, H, W; write a sidecar")
    if len(out_dims) != 2 or out_dims[1] is None or out_dims[1] <= 0:
        raise ArtifactError(f"{p}: output shape {out_dims} is not [N, classes]; write a sidecar")
    c = int(in_dims[1])
    return ModelSpec(
        (c, int(in_dims[2]), int(in_dims[3])), int(out_dims[1]), (0.0,) * c, (1.0,) * c
    )
