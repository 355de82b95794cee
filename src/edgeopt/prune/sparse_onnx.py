"""Sparse ONNX files and the size report of dense and sparse files.

Part of :mod:`edgeopt.prune.sparse_storage`'s API (re-exported there): :func:`to_sparse_onnx`
moves large mostly-zero initializers of an ONNX model to ``sparse_initializer``s, and
:func:`size_report` puts dense, sparse and gzip'd bytes of files side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ConfigError, ModelLoadError, brief


def to_sparse_onnx(onnx_in: str | Path, onnx_out: str | Path, min_sparsity: float = 0.5,
                   min_elements: int = 1024) -> Path:
    """Copy an ONNX model with its large mostly-zero initializers as ``sparse_initializer``s.

    ONNX stores a sparse tensor as its non-zero values plus int64 linear indices (8 bytes
    each: the checker accepts no narrower type), so an fp32 initializer only shrinks above
    2/3 sparsity; one is converted when it has ``min_elements`` or more elements, at least
    ``min_sparsity`` zeros, and its sparse form is smaller. ONNX Runtime densifies sparse
    initializers when it loads the model: the file is smaller, the run is not faster.

    Args:
        onnx_in: the dense ONNX file. onnx_out: where to write the sparse one (atomically).
        min_sparsity: fraction of zeros an initializer needs, in ``[0, 1]``.
        min_elements: smaller initializers stay dense.

    Returns:
        ``onnx_out`` as a Path.

    Raises:
        ConfigError: ``min_sparsity`` out of range. ArtifactError: ``onnx_in`` is unreadable.

    Example:
        >>> import tempfile, onnx
        >>> from onnx import helper, numpy_helper
        >>> w = np.zeros((64, 64), np.float32); w[:, 0] = 1.0
        >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        ...     [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        ...     [numpy_helper.from_array(w, "w")])
        >>> d = tempfile.mkdtemp(); onnx.save(helper.make_model(g), d + "/m.onnx")
        >>> len(onnx.load(to_sparse_onnx(d + "/m.onnx", d + "/s.onnx")).graph.sparse_initializer)
        1
    """
    from edgeopt._io import write_with_atomic
    from edgeopt.errors import ArtifactError, require

    onnx = require("onnx", "onnx", "sparse ONNX conversion")
    from onnx import helper, numpy_helper

    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ConfigError(f"to_sparse_onnx: min_sparsity={min_sparsity!r} must be in [0, 1]")
    try:
        model = onnx.load(str(onnx_in), load_external_data=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValueError, OSError ...
        raise ArtifactError(f"cannot read ONNX file {onnx_in}: {brief(exc, 200)}") from None
    graph = model.graph
    inputs = {i.name for i in graph.input}  # an initializer that is also an input stays dense
    keep, sparse = [], []
    for init in graph.initializer:
        a = numpy_helper.to_array(init)
        nnz = int(np.count_nonzero(a))
        if (init.name in inputs or a.size < min_elements or a.dtype.kind not in "fiu"
                or 1.0 - nnz / a.size < min_sparsity or nnz * (a.itemsize + 8) >= a.size * a.itemsize):
            keep.append(init)
            continue
        flat = a.reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int64)
        values = numpy_helper.from_array(flat[idx], init.name)
        sparse.append(helper.make_sparse_tensor(values, numpy_helper.from_array(idx, init.name + "_indices"),
                                                list(a.shape)))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.sparse_initializer.extend(sparse)
    onnx.checker.check_model(model)
    return write_with_atomic(onnx_out, lambda tmp: onnx.save(model, str(tmp)))


def _sparse_onnx_counts(path: Path) -> tuple[int, int] | None:
    """(elements, non-zeros) of an ONNX file's weights, sparse initializers included."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    if not model.graph.sparse_initializer:
        return None
    skip = {onnx.TensorProto.INT64, onnx.TensorProto.BOOL}
    n = nz = 0
    for t in model.graph.initializer:
        if t.data_type not in skip:
            a = numpy_helper.to_array(t)
            n, nz = n + a.size, nz + int(np.count_nonzero(a))
    for s in model.graph.sparse_initializer:
        n += int(np.prod(list(s.dims)))
        nz += int(np.count_nonzero(numpy_helper.to_array(s.values)))
    return n, nz


def size_report(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """Bytes, gzip'd bytes and weight counts of files side by side, relative to the first.

    Args:
        paths: files to compare, the reference (usually the dense checkpoint) first: dense or
            sparse safetensors checkpoints, (sparse) ONNX files, any file.

    Returns:
        ``{file name: {"path", "kind" ("dense"|"sparse fp32"|"sparse int8"|"onnx"|
        "sparse onnx"|...), "bytes", "gzip_bytes", "ratio" (bytes / first's bytes),
        "gzip_ratio", "params", "nonzero_params"}}`` in the given order.

    Raises:
        ArtifactError: a path does not exist.

    Example:
        >>> import tempfile
        >>> from edgeopt.models import save_checkpoint
        >>> import torch
        >>> from edgeopt.prune.sparse_storage import save_sparse
        >>> w = torch.zeros(256, 256); w[:, :32] = 1.0
        >>> d = tempfile.mkdtemp(); m = torch.nn.Linear(256, 256, bias=False)
        >>> with torch.no_grad(): _ = m.weight.copy_(w)
        >>> r = size_report([save_checkpoint(d + "/m", m), save_sparse(d + "/m.sparse", m)])
        >>> r["m.sparse.safetensors"]["kind"], r["m.sparse.safetensors"]["ratio"] < 0.2
        ('sparse fp32', True)
    """
    from edgeopt.evaluate.size import measure_size
    from edgeopt.prune.sparse_storage import sparse_header

    out: dict[str, dict[str, Any]] = {}
    first: dict[str, Any] | None = None
    for path in paths:
        p = Path(path)
        size = measure_size(p)
        row: dict[str, Any] = {"path": str(p), "kind": size.format, "bytes": size.bytes,
                               "gzip_bytes": size.gzip_bytes, "params": size.params,
                               "nonzero_params": size.nonzero_params}
        if p.suffix == ".safetensors":
            try:
                header = sparse_header(p)
            except ModelLoadError:
                row["kind"] = "dense"
            else:
                row["kind"] = f"sparse {header.get('values')}"
                entries = header["tensors"].values()
                row["params"] = sum(int(np.prod(e["shape"])) if e["shape"] else 1 for e in entries)
                row["nonzero_params"] = sum(int(e.get("nnz", 0)) for e in entries)
        elif p.suffix == ".onnx":
            counts = _sparse_onnx_counts(p)
            if counts is not None:
                row["kind"] = "sparse onnx"
                row["params"], row["nonzero_params"] = counts
        first = first or row
        row["ratio"] = row["bytes"] / first["bytes"] if first["bytes"] else None
        row["gzip_ratio"] = row["gzip_bytes"] / first["gzip_bytes"] if first["gzip_bytes"] else None
        out[p.name if p.name not in out else str(p)] = row
    return out
