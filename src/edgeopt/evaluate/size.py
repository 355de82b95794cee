"""Size of what you would ship: bytes on disk, gzip'd bytes, parameters, non-zeros.

* ``bytes``: the artifact file's size (a folder artifact such as a Core ML ``.mlpackage``:
  all its files summed; an OpenVINO ``model.xml``: plus its weights file ``model.bin``). The
  ``FILE.edgeopt.json`` sidecar is metadata, not part of the model, and is not counted.
* ``gzip_bytes``: the same bytes compressed with gzip level 9. A pruned model stored
  densely is no smaller on disk, but its zeros compress: this is what it costs over a
  network, and it shows whether pruning pays without a sparse format.
* ``params`` / ``nonzero_params``: weight elements stored in the file and how many are
  non-zero. ONNX: every initializer except int64/bool ones (shape and index constants;
  quantized files also count their scales and zero points). safetensors / torch weights files: every tensor. An ``nn.Module``: its
  state_dict tensors except buffers such as BatchNorm running statistics, with
  ``torch.nn.utils.prune`` masks applied (``weight_orig * weight_mask``).
* An ``nn.Module`` with no file is serialised (effective state_dict, masks applied) to a
  temporary safetensors file, which is measured and deleted.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError, ConfigError

_CHUNK = 1 << 20  # read 1 MiB at a time, so a large file is never held in memory twice
SIDECAR_SUFFIX = ".edgeopt.json"


@dataclasses.dataclass(frozen=True)
class SizeResult:
    """Size of one artifact.

    Attributes:
        bytes: size on disk, in bytes.
        gzip_bytes: size after gzip level 9, in bytes (per file, summed for a folder).
        params: parameter elements stored (None when the format is not understood).
        nonzero_params: of which non-zero (None when ``params`` is None).
        sparsity: ``1 - nonzero_params / params`` (None when unknown).
        files: the files measured (paths as strings; ``"<module state_dict>"`` for a module).
        format: ``"onnx"``, ``"safetensors"``, ``"torch"``, ``"folder"`` or ``"other"``.
    """

    bytes: int
    gzip_bytes: int
    params: int | None
    nonzero_params: int | None
    sparsity: float | None
    files: list[str]
    format: str

    @property
    def compression_ratio(self) -> float:
        """``bytes / gzip_bytes`` (how much gzip saves)."""
        return self.bytes / self.gzip_bytes if self.gzip_bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["compression_ratio"] = self.compression_ratio
        return d


def gzip_size(path: str | os.PathLike[str], level: int = 9) -> int:
    """Bytes of ``path`` after gzip at ``level``, streamed (the file is never loaded whole).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "zeros.bin"
        >>> _ = p.write_bytes(bytes(100_000))
        >>> gzip_size(p) < 1_000
        True
    """
    # wbits=31: a gzip container (header + trailer), the same bytes as `gzip -9`.
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    total = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            total += len(comp.compress(chunk))
    return total + len(comp.flush())


def _count(arrays) -> tuple[int, int]:
    """(elements, non-zero elements) over an iterable of numpy arrays or torch tensors."""
    n = nz = 0
    for a in arrays:
        if hasattr(a, "detach"):  # torch tensor
            n += int(a.numel())
            nz += int(a.count_nonzero()) if a.numel() else 0
        else:
            a = np.asarray(a)
            n += int(a.size)
            nz += int(np.count_nonzero(a))
    return n, nz


def _onnx_params(path: Path) -> tuple[int, int]:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError ...
        raise ArtifactError(f"cannot read ONNX file {path}: {' '.join(str(exc).split())[:200]}") from None
    # int64/bool initializers are shapes, axes and indices (the exporter's constants), not
    # weights; int32 stays counted (quantized biases are int32).
    skip = {onnx.TensorProto.INT64, onnx.TensorProto.BOOL}
    inits = [t for t in model.graph.initializer if t.data_type not in skip]
    return _count(numpy_helper.to_array(t) for t in inits)


def _safetensors_params(path: Path) -> tuple[int, int]:
    from safetensors import safe_open

    try:
        # framework "pt": bfloat16 and float8 tensors have no numpy dtype.
        with safe_open(str(path), framework="pt") as f:
            return _count(f.get_tensor(k) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:
        raise ArtifactError(f"cannot read safetensors file {path}: {' '.join(str(exc).split())[:200]}") from None


def _torch_file_params(path: Path) -> tuple[int, int]:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as exc:
        raise ArtifactError(f"cannot read {path} as a weights-only torch file: {' '.join(str(exc).split())[:200]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    tensors = list(_flatten_tensors(obj))
    return _count(t.int_repr() if t.is_quantized else t for t in tensors)


def _flatten_tensors(obj: Any):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _flatten_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _flatten_tensors(v)


def _openvino_params(path: Path) -> tuple[int | None, int | None]:
    from edgeopt.errors import MissingDependencyError
    from edgeopt.runtime.openvino_runner import ir_weight_counts

    try:
        return ir_weight_counts(path)
    except MissingDependencyError:  # bytes are still measurable without openvino
        return None, None


_PARAM_READERS = {".onnx": ("onnx", _onnx_params), ".safetensors": ("safetensors", _safetensors_params),
                  ".pt": ("torch", _torch_file_params), ".pth": ("torch", _torch_file_params)}
_PARAM_READERS[".xml"] = ("openvino", _openvino_params)  # OpenVINO IR (weights in the .bin)


def _file_params(path: Path) -> tuple[str, int | None, int | None]:
    fmt, reader = _PARAM_READERS.get(path.suffix.lower(), ("other", None))
    if reader is None:
        return fmt, None, None
    n, nz = reader(path)
    return fmt, n, nz


def _measure_path(path: Path) -> SizeResult:
    if path.is_file():
        fmt, n, nz = _file_params(path)
        # an OpenVINO model.xml ships with its weights in model.bin: count both
        from edgeopt.artifact import artifact_files

        files = [f for f in artifact_files(path) if f.is_file()]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(SIDECAR_SUFFIX))
        fmt, n, nz = "folder", None, None
        for f in files:  # a folder's weights live in the files we can read (e.g. *.onnx)
            _, fn, fnz = _file_params(f)
            if fn is not None:
                n, nz = (n or 0) + fn, (nz or 0) + fnz
    else:
        raise ArtifactError(f"cannot measure the size of {path}: no such file or folder")
    return SizeResult(
        bytes=sum(f.stat().st_size for f in files),
        gzip_bytes=sum(gzip_size(f) for f in files),
        params=n,
        nonzero_params=nz,
        sparsity=(1.0 - nz / n) if n else None,
        files=[str(f) for f in files],
        format=fmt,
    )


def effective_state_dict(model: Any) -> tuple[dict[str, Any], set[str]]:
    """The tensors a module would ship, and which of them are buffers.

    ``torch.nn.utils.prune`` keeps ``weight_orig`` and ``weight_mask``; the shipped weight is
    their product, under the name ``weight``. Quantized tensors are stored as their integer
    representation; packed parameters (tuples of tensors) are flattened with ``.0``, ``.1``.

    Returns:
        (name -> contiguous CPU tensor, names of non-parameter buffers).
    """
    import torch

    sd = model.state_dict(keep_vars=False)
    buffers = {name for name, _ in model.named_buffers()}
    out: dict[str, torch.Tensor] = {}
    buffer_names: set[str] = set()
    for key, value in sd.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in sd:
            continue  # folded into the weight below
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in sd:
            base = key[: -len("_orig")]
            out[base] = (value * sd[base + "_mask"]).detach()
            continue
        for i, t in enumerate(_flatten_tensors(value)):
            name = key if isinstance(value, torch.Tensor) else f"{key}.{i}"
            out[name] = t.int_repr() if t.is_quantized else t.detach()
            if key in buffers:
                buffer_names.add(name)
    # safetensors refuses shared or strided storage: give each tensor its own contiguous copy.
    out = {k: v.cpu().contiguous().clone() for k, v in out.items()}
    return out, buffer_names


def _measure_module(model: Any) -> SizeResult:
    from safetensors.torch import save_file

    tensors, buffer_names = effective_state_dict(model)
    n, nz = _count(t for k, t in tensors.items() if k not in buffer_names)
    with tempfile.TemporaryDirectory(prefix="edgeopt-size-") as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(tensors, str(path))
        size = path.stat().st_size
        gz = gzip_size(path)
    return SizeResult(
        bytes=size, gzip_bytes=gz, params=n, nonzero_params=nz,
        sparsity=(1.0 - nz / n) if n else None, files=["<module state_dict>"], format="safetensors",
    )


def measure_size(target: Any) -> SizeResult:
    """Bytes on disk, gzip'd bytes, parameters and non-zero parameters of an artifact.

    Args:
        target: a file or folder path, an ``edgeopt.artifact.Artifact`` (its ``path``), or an
            ``nn.Module`` (serialised to a temporary safetensors file to measure).

    Returns:
        A SizeResult.

    Raises:
        ArtifactError: the path does not exist or its weights cannot be read.
        ConfigError: the target is none of the above.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.zero_()
        >>> r = measure_size(lin)
        >>> r.params, r.nonzero_params == int(lin.bias.count_nonzero())
        (10, True)
    """
    try:
        import torch

        if isinstance(target, torch.nn.Module):
            return _measure_module(target)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(target, (str, os.PathLike)):
        return _measure_path(Path(target))
    if hasattr(target, "path"):  # an Artifact
        return _measure_path(Path(target.path))
    raise ConfigError(f"measure_size: cannot measure a {type(target).__name__}; give a path, Artifact or nn.Module")
