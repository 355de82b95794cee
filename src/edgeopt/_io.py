"""Atomic writes: a file is written to a temporary name beside it, then renamed.

An interrupted run therefore never leaves a half-written checkpoint, results file or
report: readers see the old file or the new one, never a torn one. A full disk or a
read-only file system is one OutputError line; temporaries of killed writers are removed by
the next write. Checks of output paths before work starts and the one-run-per-folder lock
live in :mod:`edgeopt._outputs`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, EdgeoptError, OutputError, brief


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` on success.

    The temporary file is ``.NAME.p<pid>-<random>.tmp``; the file renamed onto ``path`` has
    the mode a plain ``open()`` would give (``0666`` less the umask, or the mode of the file
    it replaces), never ``mkstemp``'s or a library's ``0600``. On any exception the
    temporary is removed and the old file is kept; leftovers of a killed writer of the same
    file (its pid is dead) are removed first. A full disk, a read-only file system or a
    denied permission is one ``OutputError``; a folder in the way that is a file, a
    ``ConfigError``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "x.txt") as tmp:
        ...     _ = tmp.write_text("hi")
        >>> (d / "x.txt").read_text()
        'hi'
    """
    target = Path(path)
    _make_dirs(target.parent, target)
    remove_stale_temps(target)
    tmp = target.parent / f".{target.name}.p{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:
            raise _write_error(target, exc) from None
        raise
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)  # open() on an existing file keeps its mode
    except OSError:
        mode = 0o666 & ~current_umask()  # a new file: what open() gives under the umask
    try:
        yield tmp
        # Writers such as safetensors create their file 0600 themselves: set the mode last.
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        ours = isinstance(exc, EdgeoptError) or not isinstance(exc, Exception)  # e.g. Ctrl-C
        full = not ours and not isinstance(exc, OSError) and _no_room(target.parent)
        _unlink_quietly(tmp)
        err = None if ours else _oserror_in(exc)
        if err is not None:
            raise _write_error(target, err) from None
        if full:  # a library's own error type (e.g. torch's "file write failed") on a full disk
            raise OutputError(
                f"cannot write {target}: no space left on device ({brief(exc, 120)}); "
                "free some space or write elsewhere; the old file, if any, is unchanged"
            ) from None
        raise


def _make_dirs(folder: Path, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        from edgeopt._outputs import _folder_problem

        problem = _folder_problem(folder)
        if problem is None:
            raise
        where = "" if problem.startswith(":") else f": {folder}"
        raise ConfigError(f"cannot write {target}{where}{problem}; choose another path") from None
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:
            raise _write_error(target, exc) from None
        raise


# -- what a failed write says ----------------------------------------------------------------
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                  getattr(errno, "EDQUOT", errno.ENOSPC)}
_WHY = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied",
        errno.EFBIG: "file too large for this file system",
        getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded"}


def _oserror_in(exc: BaseException) -> OSError | None:
    """The full-disk / read-only / permission OSError in ``exc`` or its causes, if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in _OUTPUT_ERRNOS:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _write_error(target: Path, exc: OSError) -> OutputError:
    why = _WHY.get(exc.errno, os.strerror(exc.errno or 0))
    hint = ("free some space or write elsewhere" if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", 0))
            else "write to another folder")
    return OutputError(f"cannot write {target}: {why}; {hint}; nothing partial was left "
                       f"and the old file, if any, is unchanged")


def _no_room(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (almost) no space left for this user."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < _NO_ROOM_BYTES


_NO_ROOM_BYTES = 1 << 20  # under 1 MiB free: a failed write there is a full disk


# -- temporary files --------------------------------------------------------------------------
_TMP_SUFFIX = ".tmp"
_LEGACY_TMP_AGE_S = 60.0  # mkstemp names carry no pid: only older ones are surely abandoned


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writers of ``target`` left behind.

    An atomic write's temporary is ``.NAME.p<pid>-<random>.tmp``; it is stale when that
    process is gone (a live writer's temporary is never touched). Names from older
    versions (``.NAME.<8 chars>.tmp``, no pid) are removed when over a minute old.

    Returns:
        The paths removed.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".m.onnx.p999999999-ab12cd34.tmp").write_bytes(b"")
        >>> [p.name for p in remove_stale_temps(d / "m.onnx")]
        ['.m.onnx.p999999999-ab12cd34.tmp']
    """
    t = Path(target)
    pat = re.compile(rf"^\.{re.escape(t.name)}\.(?:p(\d+)-[0-9a-f]+|[A-Za-z0-9_]{{8}})"
                     rf"{re.escape(_TMP_SUFFIX)}$")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(t.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = pat.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if m.group(1) is not None:
                stale = not pid_alive(int(m.group(1)))
            else:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_TMP_AGE_S
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when that cannot be told).

    Example:
        >>> pid_alive(os.getpid()), pid_alive(999999999)
        (True, False)
    """
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def current_umask() -> int:
    """This process's umask, read without changing it where the OS allows (Linux /proc).

    Example:
        >>> 0 <= current_umask() <= 0o777
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return mask


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_with_atomic(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` (e.g. a library's save function), then rename atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _json_default(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
