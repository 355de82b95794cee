"""On-disk caches: checked archive reading and atomic safetensors array caches.

Image archives are read member by member in memory instead of being extracted: the
decoded arrays are what we cache, and skipping 60,000 small file writes saves about a
minute on CIFAR-10. Every member is still checked first (DESIGN habit 9): no absolute
names, no ``..``, no links, no device files; an archive with one is refused whole.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from edgeopt._io import atomic_path
from edgeopt.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file named like a tar archive (``.tar.gz``, ``.tgz``, ``.tar``)."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def fingerprint(*parts: object) -> str:
    """A short stable hash of ``parts`` (paths, sizes, mtimes, options) for cache keys."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_key(path: Path) -> tuple[str, int, int]:
    """``(resolved path, size, mtime_ns)``: changes when the file is replaced or edited."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Raise DataError unless ``member`` is a plain file or folder inside the target."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(f"unsafe path '{name}' in archive {archive}: refusing to extract it")
    if member.issym() or member.islnk():
        raise DataError(f"archive {archive} holds a link '{name}': refusing to extract it")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"archive {archive} holds a special file '{name}': refusing to extract it")


def read_archive(archive: Path) -> Iterator[tuple[tuple[str, ...], bytes | None]]:
    """Yield ``(path parts, bytes)`` of each file in a tar archive (``None`` for folders).

    Members are read in memory, never written to disk, and every member is checked
    (:func:`check_member`): an archive with an absolute name, a ``..``, a link or a
    device file raises DataError, and callers drop what they had read, so nothing of it
    is used.

    Raises:
        DataError: the archive is unreadable or holds an unsafe member.

    Example:
        >>> import tarfile, tempfile, io, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with tarfile.open(d / "a.tar.gz", "w:gz") as t:
        ...     info = tarfile.TarInfo("x/hello.txt"); info.size = 2
        ...     t.addfile(info, io.BytesIO(b"hi"))
        >>> list(read_archive(d / "a.tar.gz"))
        [(('x', 'hello.txt'), b'hi')]
    """
    try:
        # One streaming pass ("r|*": no seeking back through the gzip). A bad member
        # raises before the caller has used anything: it only collects bytes in memory.
        with tarfile.open(archive, "r|*") as tar:
            for m in tar:
                check_member(m, archive)
                parts = tuple(p for p in PurePosixPath(m.name).parts if p not in ("", "."))
                if m.isdir():
                    yield parts, None
                else:
                    fh = tar.extractfile(m)
                    yield parts, fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read archive {archive}: {exc}") from None


def save_arrays(
    path: Path, arrays: dict[str, np.ndarray], meta: dict[str, str] | None = None
) -> Path:
    """Write ``arrays`` (and string ``meta``) to a ``.safetensors`` file atomically.

    safetensors rather than .npz: it is read back memory-mapped in milliseconds (an .npz
    of CIFAR-10 takes about a second, mostly zip CRC checks) and it cannot hold code.
    """
    from safetensors.torch import save_file

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta or {})
    return path


def load_arrays(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """Read a file written by :func:`save_arrays`: ``(tensors, meta)``, or None if unusable.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.safetensors"
        >>> _ = save_arrays(p, {"x": np.arange(3, dtype=np.uint8)}, {"k": "v"})
        >>> t, meta = load_arrays(p)
        >>> t["x"].tolist(), meta["k"]
        ([0, 1, 2], 'v')
    """
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt, not an error
        return None
