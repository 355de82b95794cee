"""Checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (sidecar). Nothing is unpickled.

The sidecar records what is needed to rebuild and trust the weights: a format marker and
version, the architecture (``{"name", "kwargs"}``, from ``create_model``), the ModelSpec,
training history, metrics, the lineage of steps, torch/edgeopt versions, a UTC timestamp
and the SHA-256 of the weights file; for a structurally pruned model also the structure
record (key ``"pruning"``, :mod:`edgeopt.prune.record`) that resizes the freshly built
architecture before its weights load. Both files are written atomically (weights first, so a
sidecar on disk always points at complete weights).

Weights are read by :func:`edgeopt.models.weights.load_weights_` (safetensors, or a
weights-only torch file); nothing is unpickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt._io import _json_default, write_text_atomic, write_with_atomic
from edgeopt.errors import ConfigError, ModelLoadError, UnsupportedModelError
from edgeopt.models.trust import check_model_code
from edgeopt.models.weights import load_state_, load_weights_
from edgeopt.spec import SPEC_ATTR, ModelSpec, attach_spec

FORMAT = "edgeopt_checkpoint"
FORMAT_VERSION = 1


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``.

    Example:
        >>> [p.name for p in checkpoint_paths("runs/best.safetensors")]
        ['best.safetensors', 'best.json']
    """
    p = Path(path)
    for suffix in (".safetensors", ".json"):
        if p.name.endswith(suffix) and len(p.name) > len(suffix):
            p = p.with_name(p.name[: -len(suffix)])
            break
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    history: Any = None,
    metrics: Mapping[str, Any] | None = None,
    lineage: list[Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights (safetensors) and a JSON sidecar, both atomically.

    Args:
        path: ``NAME`` or ``NAME.safetensors``; ``NAME.json`` is written beside it.
        model: the model; its ``edgeopt_arch`` and ``edgeopt_spec`` go into the sidecar, and
            a structurally pruned model's ``edgeopt_prune_record`` under ``"pruning"``.
        history: training history (e.g. a list of per-epoch dicts); JSON values.
        metrics: final metrics, e.g. ``{"val_acc": 0.91}``.
        lineage: the steps that produced the model, e.g. ``[{"step": "train", ...}]``.
        extra: anything else JSON-serialisable.

    Returns:
        The path of the ``.safetensors`` file.

    Raises:
        UnsupportedModelError: the state_dict holds non-tensors or quantized tensors
            (e.g. an eager-mode int8 model); export such models instead.
        ConfigError: history/metrics/lineage/extra are not JSON-serialisable.

    Example:
        >>> import tempfile, torch
        >>> from edgeopt.models import create_model, load_checkpoint
        >>> from edgeopt.spec import ModelSpec
        >>> m = create_model("resnet20", ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3))
        >>> p = save_checkpoint(tempfile.mkdtemp() + "/r20", m, metrics={"acc": 0.5})
        >>> m2, side = load_checkpoint(p)
        >>> side["arch"]["name"], side["metrics"]["acc"]
        ('resnet20', 0.5)
    """
    weights_path, sidecar_path = checkpoint_paths(path)
    tensors = _plain_state_dict(model)
    spec = getattr(model, SPEC_ATTR, None)
    sidecar: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": weights_path.name,
        "arch": getattr(model, "edgeopt_arch", None),
        "spec": spec.to_dict() if isinstance(spec, ModelSpec) else None,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "history": history if history is not None else [],
        "metrics": dict(metrics or {}),
        "lineage": list(lineage or []),
        "extra": dict(extra or {}),
        "torch_version": torch.__version__,
        "edgeopt_version": _edgeopt_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record = getattr(model, "edgeopt_prune_record", None)
    if record is not None:  # structured pruning: the shapes to rebuild (edgeopt.prune.record)
        sidecar["pruning"] = record
    try:  # fail before anything is written
        json.dumps(sidecar, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint history/metrics/lineage/extra must be JSON values: {exc}"
        ) from None

    from safetensors.torch import save_file

    # The sidecar also travels inside the weights file's own header: the two files are
    # renamed one after the other, and a kill between the renames must not leave weights
    # that nothing describes. load_checkpoint falls back to this copy in that case.
    sidecar["save_id"] = uuid.uuid4().hex
    embedded = json.dumps(sidecar, default=_json_default)
    write_with_atomic(
        weights_path,
        lambda tmp: save_file(
            tensors, str(tmp), metadata={"format": "pt", "edgeopt": FORMAT, "edgeopt_sidecar": embedded}
        ),
    )
    sidecar["sha256"] = _sha256(weights_path)
    write_text_atomic(sidecar_path, json.dumps(sidecar, indent=2, default=_json_default) + "\n")
    return weights_path


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict as independent, contiguous, CPU tensors (safetensors' requirements).

    Cloning breaks storage sharing, so tied weights (one tensor under two names) are saved
    twice and load back into both names.
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise UnsupportedModelError(
                f"cannot save '{name}' ({type(value).__name__}) as safetensors; a converted "
                f"int8 model is saved by exporting it (edgeopt.export), not as a checkpoint"
            )
        if value.is_quantized:
            raise UnsupportedModelError(
                f"cannot save quantized tensor '{name}' ({value.dtype}) as safetensors; "
                f"export the quantized model (edgeopt.export) instead"
            )
        if value.is_meta:
            raise UnsupportedModelError(f"'{name}' is on the meta device and holds no data")
        value = value.detach()
        if value.layout != torch.strided:  # sparse storage: save the dense equivalent
            value = value.to_dense()
        out[name] = value.to("cpu").clone().contiguous()
    return out


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint's JSON sidecar.

    Args:
        path: ``NAME``, ``NAME.safetensors`` or ``NAME.json``.

    Returns:
        The sidecar dict.

    Raises:
        ModelLoadError: missing, not JSON, not an edgeopt checkpoint, or a newer format.

    Example:
        >>> read_sidecar("/nonexistent/x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        edgeopt.errors.ModelLoadError: checkpoint sidecar not found: ...
    """
    weights_path, sidecar_path = checkpoint_paths(path)
    if not sidecar_path.is_file():
        raise ModelLoadError(
            f"checkpoint sidecar not found: {sidecar_path}; to load bare weights into a model "
            f"you built, use edgeopt.models.load_weights_(model, '{weights_path}')"
        )
    try:
        data = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{sidecar_path} is not valid JSON ({exc}); re-save the checkpoint"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelLoadError(
            f'{sidecar_path} is not an edgeopt checkpoint sidecar (no "format": "{FORMAT}"); '
            f"use edgeopt.models.load_weights_(model, path) for foreign weights"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{sidecar_path} has checkpoint format version {version!r}; this edgeopt reads "
            f"up to {FORMAT_VERSION}: upgrade edgeopt"
        )
    return data


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | Mapping[str, Any] | nn.Module | None = None,
    trust_model_code: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model recorded in a checkpoint and load its weights.

    Args:
        path: ``NAME``, ``NAME.safetensors`` or ``NAME.json``.
        arch: override the recorded architecture: a model name (the recorded kwargs are
            kept if the name is the same), ``{"name": ..., "kwargs": {...}}``, or a model
            instance to load the weights into. Naming a ``package.module:factory`` here
            allows that code (you named it).
        trust_model_code: allow the ``package.module:factory`` the sidecar records. Without
            it (or :func:`edgeopt.models.allow_model_code`, or ``EDGEOPT_TRUSTED_MODULES``)
            a sidecar naming code is refused: files never make edgeopt run code.

    Returns:
        ``(model, sidecar)``: the model in eval mode, carrying ``edgeopt_spec``,
        ``edgeopt_arch`` and ``edgeopt_lineage`` (the sidecar's lineage list); the
        sidecar dict (history, metrics, lineage, ...). A structurally pruned checkpoint
        (sidecar key ``"pruning"``) is rebuilt with :func:`edgeopt.prune.record.apply_record_`
        before its weights load, and the model carries the record as ``edgeopt_prune_record``.

    Raises:
        ModelLoadError: a file is missing, corrupt, foreign, changed since saving, or the
            weights do not fit the architecture (the message names the tensors).
        UntrustedCodeError: the sidecar names model code the user did not allow.

    Example:
        >>> import tempfile
        >>> from edgeopt.models import create_model
        >>> from edgeopt.spec import ModelSpec
        >>> m = create_model("simple_cnn", ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)))
        >>> p = save_checkpoint(tempfile.mkdtemp() + "/cnn.safetensors", m)
        >>> m2, side = load_checkpoint(p)
        >>> side["spec"]["input_shape"]
        [1, 8, 8]
    """
    weights_path, sidecar_path = checkpoint_paths(path)
    given = Path(path)
    if given.is_file() and given not in (weights_path, sidecar_path):
        # model.pth, resnet20.th, model.onnx: a file that exists but is not an edgeopt checkpoint
        raise ModelLoadError(
            f"{given} is not an edgeopt checkpoint (NAME.safetensors + NAME.json); bring it in "
            f"first: edgeopt import {given} --model ARCH --preset imagenet|cifar10 (see edgeopt import --help)"
        )
    if not weights_path.is_file():
        raise ModelLoadError(
            f"checkpoint weights not found: {weights_path}; give NAME, NAME.safetensors or "
            f"NAME.json of a checkpoint written by edgeopt.models.save_checkpoint"
        )
    sidecar = read_sidecar(path)
    if sidecar.get("sha256") and _sha256(weights_path) != sidecar["sha256"]:
        # A save killed between its two renames leaves new weights beside the previous
        # sidecar: the weights then carry a sidecar of another save_id, which describes
        # them. Same save_id and another hash means the weights were damaged: refused below.
        embedded = _embedded_sidecar(weights_path)
        if embedded and embedded.get("save_id") != sidecar.get("save_id"):
            sidecar = embedded

    spec = None
    if sidecar.get("spec") is not None:
        try:
            spec = ModelSpec.from_dict(sidecar["spec"])
        except ConfigError as exc:
            raise ModelLoadError(f"{sidecar_path}: {exc}") from None

    if isinstance(arch, nn.Module):
        model = arch
        if spec is not None and getattr(model, SPEC_ATTR, None) is None:
            attach_spec(model, spec)
    else:
        name, kwargs = _resolve_arch(arch, sidecar, sidecar_path)
        if arch is None and not trust_model_code:
            check_model_code(name, str(sidecar_path))
        if spec is None:
            raise ModelLoadError(
                f"{sidecar_path} records no ModelSpec; pass the model itself: "
                f"load_checkpoint(path, arch=model)"
            )
        from edgeopt.models.factory import create_model

        try:
            model = create_model(name, spec, **kwargs)
        except ConfigError as exc:
            raise ModelLoadError(
                f"cannot rebuild architecture '{name}' of {weights_path}: {exc}"
            ) from None

    record = sidecar.get("pruning")
    if record is not None:  # a structurally pruned model: resize the base before loading
        from edgeopt.prune.record import apply_record_

        apply_record_(model, record)
        model.edgeopt_prune_record = record  # saving again keeps it
    expected = sidecar.get("sha256")
    if expected and _sha256(weights_path) != expected:
        raise ModelLoadError(
            f"{weights_path} changed since {sidecar_path.name} was written (SHA-256 differs); "
            f"it is corrupt or was replaced: re-save the checkpoint, or use load_weights_"
        )
    extra = sidecar.get("extra")
    if isinstance(extra, Mapping) and extra.get("sparse"):
        # a sparse checkpoint (bitmask + packed values, edgeopt.prune.sparse_storage)
        from edgeopt.prune.sparse_storage import load_sparse

        load_state_(model, load_sparse(weights_path), weights_path)
    else:
        load_weights_(model, weights_path)
    # later steps append to this (edgeopt.train reads model.edgeopt_lineage)
    model.edgeopt_lineage = list(sidecar.get("lineage") or [])
    model.eval()
    return model, sidecar


def _recorded_arch(sidecar: dict[str, Any], sidecar_path: Path) -> tuple[str | None, dict]:
    """The sidecar's ``{"name", "kwargs"}``, checked: a file is data and may be malformed."""
    recorded = sidecar.get("arch")
    if recorded is None:
        return None, {}
    bad = None
    if not isinstance(recorded, Mapping):
        bad = f"is {type(recorded).__name__}, not {{'name': ..., 'kwargs': {{...}}}}"
    elif not isinstance(recorded.get("name"), str) or not recorded["name"].strip():
        bad = f"has no model name (name={recorded.get('name')!r})"
    elif not isinstance(recorded.get("kwargs") or {}, Mapping):
        bad = f"has kwargs of type {type(recorded.get('kwargs')).__name__}, not a mapping"
    elif any(not isinstance(k, str) for k in (recorded.get("kwargs") or {})):
        bad = "has non-string argument names"
    if bad:
        raise ModelLoadError(
            f"{sidecar_path}: its 'arch' {bad}; the sidecar is damaged or hand-edited: "
            f"re-save the checkpoint, or pass the architecture yourself (--model NAME)"
        )
    return recorded["name"], dict(recorded.get("kwargs") or {})


def _resolve_arch(arch: Any, sidecar: dict[str, Any], sidecar_path: Path) -> tuple[str, dict]:
    recorded_name, recorded_kwargs = _recorded_arch(sidecar, sidecar_path)
    if arch is None:
        if not recorded_name:
            raise ModelLoadError(
                f"{sidecar_path} records no architecture (the model was not built with "
                f"create_model); pass arch='NAME' or arch=model to load_checkpoint"
            )
        return recorded_name, recorded_kwargs
    if isinstance(arch, str):
        return arch, recorded_kwargs if recorded_name == arch else {}
    if isinstance(arch, Mapping) and isinstance(arch.get("name"), str):
        return arch["name"], dict(arch.get("kwargs") or {})
    raise ModelLoadError(
        f"arch must be a model name, {{'name': ..., 'kwargs': {{...}}}} or an nn.Module, got {arch!r}"
    )


def _embedded_sidecar(weights_path: Path) -> dict[str, Any] | None:
    """The sidecar copy stored in a safetensors header by save_checkpoint, if any."""
    try:
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as fh:
            meta = fh.metadata() or {}
        data = json.loads(meta.get("edgeopt_sidecar", "null"))
    except Exception:  # a corrupt header is reported by load_weights_ with its own message
        return None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        data.pop("sha256", None)
        return data
    return None


def _sha256(p: Path) -> str:
    from edgeopt._io import file_sha256

    return file_sha256(p)


def _edgeopt_version() -> str:
    import edgeopt

    return edgeopt.__version__
