"""Sparse checkpoints: a bitmask plus the packed non-zero values, in one safetensors file.

A pruned model saved densely is no smaller on disk. :func:`save_sparse` stores each tensor
in whichever form is smaller:

* ``dense``: the tensor as it is (low sparsity, small tensors, buffers);
* ``bitmask``: ``NAME::bits`` (one bit per element, ``numpy.packbits``, little bit order,
  row-major) and ``NAME::values`` (the non-zero elements in order, in the tensor's dtype);
  when some zeros are ``-0.0`` (``weight * 0`` of a negative weight), ``NAME::negzero``
  holds one bit per zero for its sign, so the round trip is bit-exact;
* with ``values="int8"``, float weights of 2+ dims are stored as symmetric per-output-
  channel int8 (``NAME::q``, ``NAME::scale`` = max|w| / 127 per channel, fp16 rounded up), densely
  (``dense_int8``) or as bits plus the non-zero int8 values (``bitmask_int8``); the error
  of each weight is at most half a step (``scale / 2``). Batch norms that follow a conv
  are folded into it first (:mod:`edgeopt.prune.sparse_fold`: their constants take no
  bytes, ``const``), and float vectors (biases, shifts) are stored as fp16
  (``dense_fp16``); integer tensors stay exact. The int8 file computes what the model
  computes up to int8 and fp16 rounding; the fp32 file is the exact one.

The file is written by :func:`edgeopt.models.save_checkpoint` (atomically, with the JSON
sidecar ``NAME.json`` and the sidecar's copy embedded in the file's header), so it carries
the architecture, ModelSpec and lineage of a normal checkpoint; the sidecar's
``extra.sparse`` describes each tensor (format, shape, dtype, non-zeros). Read it with
:func:`load_sparse` (a dense state_dict) or :func:`load_sparse_checkpoint` (the model).
:func:`to_sparse_onnx` moves mostly-zero ONNX initializers to ``sparse_initializer``s
(ONNX Runtime densifies them when it loads the model). :func:`size_report` puts dense,
sparse and gzip'd bytes side by side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ConfigError, ModelLoadError, UnsupportedModelError, brief

SPARSE_VERSION = 1
VALUES = ("fp32", "int8")
#: bytes of safetensors header an extra tensor entry costs (a name, dtype, shape, offsets)
_ENTRY_BYTES = 96
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


def _negative_zeros(flat: torch.Tensor, keep: torch.Tensor) -> torch.Tensor | None:
    """Bool over the zeros of ``flat``: which are ``-0.0`` (None when there are none)."""
    if not flat.is_floating_point():
        return None
    neg = torch.signbit(flat[~keep])
    return neg if bool(neg.any()) else None


def _bits(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.numpy(), bitorder="little"))


def quantize_int8(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(q, scale)`` with ``w ~ q * scale[:, None, ...]``.

    ``scale = max|w| / 127`` per channel (dim 0; 0 for an all-zero channel) in
    ``scale_dtype``; the error of each element is at most ``scale / 2``. An fp16 scale is
    rounded up (so no weight is clipped), at most 2^-10 above max|w| / 127.

    Example:
        >>> q, s = quantize_int8(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
        >>> q.tolist(), [round(float(v), 6) for v in s]
        ([[127, -64], [0, 0]], [0.007874, 0.0])
    """
    w32 = w.detach().to(torch.float32).reshape(w.shape[0], -1)
    scale = w32.abs().amax(dim=1) / 127.0
    if scale_dtype != torch.float32:
        low = scale.to(scale_dtype)
        up = torch.where(low.float() < scale, torch.nextafter(low, torch.full_like(low, float("inf"))), low)
        if bool(torch.isfinite(up).all()):
            scale = up.float()
        else:  # a weight beyond fp16's range: keep the fp32 scale
            scale_dtype = torch.float32
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(w32 / safe[:, None]), -127, 127).to(torch.int8)
    return q.reshape(w.shape), scale.to(scale_dtype)


def _pack(name: str, t: torch.Tensor, values: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The stored tensors of one tensor, and its header entry: the smaller form."""
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise UnsupportedModelError(f"sparse checkpoint: tensor '{name}' has dtype {dtype}, which it cannot store")
    entry: dict[str, Any] = {"shape": list(t.shape), "dtype": dtype}
    n = t.numel()
    if values == "int8" and t.is_floating_point() and t.dim() <= 1 and n > 1:
        # biases, batch-norm vectors, folded shifts: fp16 is far finer than the int8 weights
        return {name: t.to(torch.float16)}, {**entry, "format": "dense_fp16"}
    if values == "int8" and t.is_floating_point() and t.dim() >= 2 and n:
        q, scale = quantize_int8(t, torch.float16)  # fp16 scales: 1/2 of their bytes, error <= 2^-10
        flat = q.reshape(-1)
        keep = flat != 0
        nnz = int(keep.sum())
        entry["nnz"] = nnz
        if (n + 7) // 8 + nnz + _ENTRY_BYTES < n:
            return ({f"{name}::bits": _bits(keep), f"{name}::q": flat[keep], f"{name}::scale": scale},
                    {**entry, "format": "bitmask_int8"})
        return {f"{name}::q": q, f"{name}::scale": scale}, {**entry, "format": "dense_int8"}
    flat = t.reshape(-1)
    keep = flat != 0  # NaN counts as non-zero; -0.0 as zero, its sign kept below
    nnz = int(keep.sum())
    entry["nnz"] = nnz
    negz = _negative_zeros(flat, keep) if n else None
    sparse_bytes = (n + 7) // 8 + nnz * t.element_size() + _ENTRY_BYTES
    if negz is not None:
        sparse_bytes += (n - nnz + 7) // 8 + _ENTRY_BYTES
    if n and sparse_bytes < n * t.element_size():
        stored = {f"{name}::bits": _bits(keep), f"{name}::values": flat[keep]}
        if negz is not None:
            stored[f"{name}::negzero"] = _bits(negz)
        return stored, {**entry, "format": "bitmask", "negzero": negz is not None}
    return {name: t}, {**entry, "format": "dense"}


class _Packed(nn.Module):
    """What :func:`save_checkpoint` reads of a model, holding the packed tensors: its
    ``state_dict`` is them; parameters, spec, architecture, lineage and a structured model's
    pruning record are the source's."""

    def __init__(self, packed: dict[str, torch.Tensor], source: Any) -> None:
        super().__init__()
        self._packed = packed
        self.__dict__["_source"] = source  # not a registered submodule
        if isinstance(source, nn.Module):
            for attr in ("edgeopt_spec", "edgeopt_arch", "edgeopt_lineage", "edgeopt_prune_record"):
                if hasattr(source, attr):
                    setattr(self, attr, getattr(source, attr))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return dict(self._packed)

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        if isinstance(self._source, nn.Module):
            yield from self._source.parameters(recurse)
        else:
            yield from (t for t in self._source.values() if t.is_floating_point())


def _plain(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        from edgeopt.models.checkpoint import _plain_state_dict

        return _plain_state_dict(source)
    if not isinstance(source, Mapping):
        raise ConfigError(f"save_sparse: give a model or a state_dict, not {type(source).__name__}")
    out = {}
    for k, v in source.items():
        if not isinstance(v, torch.Tensor) or v.is_quantized:
            raise UnsupportedModelError(f"save_sparse: '{k}' is not a plain tensor ({type(v).__name__})")
        out[str(k)] = v.detach().to("cpu").to_dense().contiguous()
    return out


def save_sparse(path: str | Path, model: nn.Module | Mapping[str, torch.Tensor], values: str = "fp32", *,
                metrics: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write a sparse checkpoint (``NAME.safetensors`` + the ``NAME.json`` sidecar).

    Args:
        path: ``NAME`` or ``NAME.safetensors``, e.g. ``runs/cnn.sparse.safetensors``.
        model: a model (its spec, architecture and lineage go into the sidecar) or a
            state_dict (the sidecar then records no architecture).
        values: ``fp32``: every tensor exact (the round trip is bit-exact); ``int8``: float
            weights of 2+ dims as per-output-channel int8 (error at most half a step).
        metrics: metrics for the sidecar. extra: more JSON values for the sidecar's ``extra``.

    Returns:
        The path of the ``.safetensors`` file.

    Raises:
        ConfigError: ``values`` is not ``fp32``/``int8``.
        UnsupportedModelError: a tensor is quantized or of a dtype it cannot store.

    Example:
        >>> import tempfile
        >>> w = torch.zeros(64, 64); w[0, :8] = 1.0
        >>> p = save_sparse(tempfile.mkdtemp() + "/w", {"w": w})
        >>> torch.equal(load_sparse(p)["w"], w), sparse_header(p)["tensors"]["w"]["format"]
        (True, 'bitmask')
    """
    from edgeopt.models.checkpoint import save_checkpoint

    if values not in VALUES:
        raise ConfigError(f"save_sparse: values must be one of {', '.join(VALUES)}, got {values!r}")
    packed: dict[str, torch.Tensor] = {}
    tensors: dict[str, Any] = {}
    state, consts, pairs = _plain(model), {}, []
    if values == "int8" and isinstance(model, nn.Module):
        from edgeopt.prune.sparse_fold import conv_bn_pairs, fold_state

        pairs = conv_bn_pairs(model)
        state, consts = fold_state(model, state, pairs)
    for name, t in state.items():
        if "::" in name:
            raise UnsupportedModelError(f"save_sparse: tensor name '{name}' holds '::', which the format reserves")
        if name in consts:  # a folded batch norm's constant: no bytes
            tensors[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                             "format": "const", "value": consts[name]}
            continue
        stored, entry = _pack(name, t, values)
        packed.update({k: v.contiguous() for k, v in stored.items()})
        tensors[name] = entry
    header = {"version": SPARSE_VERSION, "values": values, "bitorder": "little", "tensors": tensors}
    if pairs:
        from edgeopt.prune.sparse_fold import folded_names

        header["folded_batchnorm"] = folded_names(pairs)
    lineage = list(getattr(model, "edgeopt_lineage", []) or []) if isinstance(model, nn.Module) else []
    return save_checkpoint(path, _Packed(packed, model), metrics=metrics, lineage=lineage,
                           extra={**dict(extra or {}), "sparse": header})


def sparse_header(path: str | Path) -> dict[str, Any]:
    """The ``extra.sparse`` header embedded in a sparse checkpoint file.

    Raises:
        ModelLoadError: the file is missing, corrupt, or not written by :func:`save_sparse`.
    """
    from safetensors import safe_open

    from edgeopt.models.checkpoint import checkpoint_paths

    p = checkpoint_paths(path)[0]
    if not p.is_file():
        raise ModelLoadError(f"sparse checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        header = (json.loads(meta.get("edgeopt_sidecar", "{}")).get("extra") or {}).get("sparse")
    except Exception as exc:  # noqa: BLE001 - safetensors' errors, or a header that is not JSON
        raise ModelLoadError(f"{p} is not a readable safetensors file ({brief(exc, 200)})") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
        raise ModelLoadError(f"{p} is not a sparse checkpoint (no sparse header); load a dense "
                             f"checkpoint with edgeopt.models.load_checkpoint")
    if header.get("version") != SPARSE_VERSION:
        raise ModelLoadError(f"{p} has sparse format version {header.get('version')!r}; this edgeopt "
                             f"reads {SPARSE_VERSION}: upgrade edgeopt")
    return header


def _unpack(fh: Any, name: str, e: Mapping[str, Any], p: Path) -> torch.Tensor:
    fmt, dtype = e.get("format"), _DTYPES.get(str(e.get("dtype")))
    shape = e.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ModelLoadError(f"{p}: the sparse header of '{name}' is damaged (dtype/shape)")
    n = int(np.prod(shape)) if shape else 1
    if fmt == "dense":
        t = fh.get_tensor(name)
    elif fmt == "dense_fp16":
        t = fh.get_tensor(name).to(dtype)
    elif fmt == "const":
        if not isinstance(e.get("value"), (int, float)):
            raise ModelLoadError(f"{p}: the sparse header of '{name}' is damaged (constant value)")
        t = torch.full(shape, float(e["value"]), dtype=dtype)
    elif fmt in ("bitmask", "bitmask_int8", "dense_int8"):
        if fmt == "dense_int8":
            q = fh.get_tensor(f"{name}::q").reshape(-1)
        else:
            bits = fh.get_tensor(f"{name}::bits").numpy()
            vals = fh.get_tensor(f"{name}::values" if fmt == "bitmask" else f"{name}::q")
            if bits.size != (n + 7) // 8:
                raise ModelLoadError(f"{p}: the bitmask of '{name}' has {bits.size} bytes, not {(n + 7) // 8}")
            mask = torch.from_numpy(np.unpackbits(bits, count=n, bitorder="little").astype(bool))
            if int(mask.sum()) != vals.numel():
                raise ModelLoadError(f"{p}: '{name}' has {int(mask.sum())} bits set but {vals.numel()} values")
            q = torch.zeros(n, dtype=vals.dtype)
            q[mask] = vals
        if fmt == "bitmask":
            t = q
            if e.get("negzero"):
                zeros = torch.nonzero(~mask).reshape(-1)
                signs = fh.get_tensor(f"{name}::negzero").numpy()
                if signs.size != (zeros.numel() + 7) // 8:
                    raise ModelLoadError(f"{p}: the zero signs of '{name}' have {signs.size} bytes")
                neg = np.unpackbits(signs, count=zeros.numel(), bitorder="little").astype(bool)
                t[zeros[torch.from_numpy(neg)]] = -0.0
        else:
            scale = fh.get_tensor(f"{name}::scale").to(torch.float32)
            t = (q.to(torch.float32).reshape(scale.numel(), -1) * scale[:, None]).to(dtype)
    else:
        raise ModelLoadError(f"{p}: '{name}' has an unknown sparse format {fmt!r}; upgrade edgeopt")
    if t.numel() != n or t.dtype != dtype:
        raise ModelLoadError(f"{p}: '{name}' holds {t.numel()} {t.dtype} values, not {shape} {dtype}")
    return t.reshape(shape)


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state_dict of a sparse checkpoint (bit-exact for ``values="fp32"``).

    Raises:
        ModelLoadError: missing, corrupt or not a sparse checkpoint.

    Example:
        >>> import tempfile
        >>> sd = {"w": torch.tensor([[0.0, -0.0], [1.5, 0.0]])}
        >>> load_sparse(save_sparse(tempfile.mkdtemp() + "/s", sd))["w"].tolist()
        [[0.0, -0.0], [1.5, 0.0]]
    """
    from safetensors import safe_open

    from edgeopt.models.checkpoint import checkpoint_paths

    header = sparse_header(path)
    p = checkpoint_paths(path)[0]
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(p), framework="pt") as fh:
            for name, entry in header["tensors"].items():
                out[name] = _unpack(fh, name, entry, p)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a tensor the header names is missing or unreadable
        raise ModelLoadError(f"{p} is a corrupt sparse checkpoint ({brief(exc, 200)}); re-save it") from None
    return out


def load_sparse_checkpoint(path: str | Path, *, arch: str | Mapping[str, Any] | nn.Module | None = None,
                           trust_model_code: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a sparse checkpoint, as :func:`edgeopt.models.load_checkpoint` does.

    Args:
        path: ``NAME``, ``NAME.safetensors`` or ``NAME.json`` of a sparse checkpoint.
        arch / trust_model_code: as in ``load_checkpoint``.

    Returns:
        ``(model, sidecar)``: the model in eval mode with the densified weights, carrying
        ``edgeopt_spec``, ``edgeopt_arch`` and ``edgeopt_lineage``.

    Raises:
        ModelLoadError: a file is missing, corrupt, changed since saving, or the weights do
            not fit the architecture. UntrustedCodeError: as in ``load_checkpoint``.

    Example:
        >>> import tempfile
        >>> from edgeopt.models import create_model
        >>> from edgeopt.spec import ModelSpec
        >>> m = create_model("simple_cnn", ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)))
        >>> m2, side = load_sparse_checkpoint(save_sparse(tempfile.mkdtemp() + "/s", m))
        >>> torch.equal(m2.fc.weight, m.fc.weight), side["arch"]["name"]
        (True, 'simple_cnn')
    """
    from edgeopt.models.checkpoint import load_checkpoint

    sparse_header(path)  # a missing or dense file is refused here, in one line
    # load_checkpoint reads the sparse format itself: one loading path for both formats
    return load_checkpoint(path, arch=arch, trust_model_code=trust_model_code)



# ONNX sparse initializers and the size report live in their own module (file length);
# they are part of this module's API.
from edgeopt.prune.sparse_onnx import size_report, to_sparse_onnx

__all__ = ["load_sparse", "load_sparse_checkpoint", "quantize_int8", "save_sparse", "size_report",
           "sparse_header", "to_sparse_onnx"]
