"""Output paths checked before any work starts, and one run per output folder.

:func:`ensure_writable_dir` / :func:`ensure_writable_file` make a bad ``--out`` or
``--out-dir`` (a file where a folder should be, a read-only folder) one line at once instead
of a traceback after an epoch; :func:`dir_lock` keeps two runs from writing into one folder
while both report success. The writes themselves are atomic (:mod:`edgeopt._io`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeopt._io import _OUTPUT_ERRNOS, _make_dirs, _unlink_quietly, _write_error, pid_alive
from edgeopt.errors import ConfigError


# -- output folders: checked before work starts --------------------------------------------
def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Check that ``path`` is (or can be created as) a writable folder; create nothing.

    Entry points call this before any work starts, so a bad ``--out-dir`` is one line at
    once, not a traceback after an epoch of training.

    Args:
        path: the folder that will be written to.
        what: how the message names it, e.g. ``"out_dir"``.

    Returns:
        ``Path(path)``.

    Raises:
        ConfigError: ``path`` or a folder above it is a file, or the nearest existing
            folder is not writable (permission, read-only file system).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "f").write_text("x")
        >>> ensure_writable_dir(d / "new" / "run").name
        'run'
        >>> ensure_writable_dir(d / "f" / "run")
        Traceback (most recent call last):
        edgeopt.errors.ConfigError: output folder ...: ... is a file, not a folder; choose another path
    """
    p = Path(path)
    problem = _folder_problem(p)
    if problem is not None:
        raise ConfigError(f"{what} {p}{problem}; choose another path")
    return p


def ensure_writable_file(path: str | os.PathLike[str], what: str = "output file", *,
                         allow_dir: bool = False) -> Path:
    """Check that the file ``path`` can be written: not a folder, its folder writable.

    Args:
        path: the file that will be written (atomically: its folder must be writable).
        what: how the message names it, e.g. ``"--out"``.
        allow_dir: an existing folder at ``path`` is fine (artifacts that are folders,
            e.g. a Core ML ``.mlpackage``, replace it).

    Raises:
        ConfigError: ``path`` is a folder, or its folder cannot be created or written.

    Example:
        >>> import tempfile, pathlib
        >>> ensure_writable_file(pathlib.Path(tempfile.mkdtemp()) / "m.onnx").name
        'm.onnx'
    """
    p = Path(path)
    if p.is_dir() and not allow_dir:
        raise ConfigError(f"{what} {p} is a folder, not a file; give a file name")
    problem = _folder_problem(p.parent)
    if problem is not None:
        where = "" if problem.startswith(":") else f": {p.parent}"
        raise ConfigError(f"{what} {p}{where}{problem}; choose another path")
    return p


def _folder_problem(p: Path) -> str | None:
    """Why ``p`` cannot be (created as) a writable folder, as a message tail; None if it can."""
    for anc in (p, *p.parents):
        if not os.path.lexists(anc):
            continue
        where = "" if anc == p else f": {anc}"
        if not anc.is_dir():
            return f"{where} is a file, not a folder"
        if not os.access(anc, os.W_OK | os.X_OK):
            why = "read-only file system" if _read_only(anc) else "permission denied"
            return f"{where} is not writable ({why})"
        return None
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# -- one run per output folder -------------------------------------------------------------
LOCK_NAME = ".edgeopt.lock"
_LOCK_EMPTY_AGE_S = 10.0  # a lock file still without its pid after this long is abandoned


@contextmanager
def dir_lock(folder: str | os.PathLike[str], what: str = "out_dir") -> Iterator[Path]:
    """Hold ``folder/.edgeopt.lock`` while a run writes into ``folder``.

    The lock file is created with ``O_EXCL`` and holds this process's pid and host. A
    lock whose process is gone (killed run) is taken over; a live one is a ConfigError
    naming the pid and the folder, so two runs never overwrite each other's checkpoints
    while both report success. The folder is created (after :func:`ensure_writable_dir`).

    Raises:
        ConfigError: another live process holds the folder, or the folder cannot be written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with dir_lock(d) as lock:
        ...     lock.name
        '.edgeopt.lock'
        >>> (d / ".edgeopt.lock").exists()
        False
    """
    d = ensure_writable_dir(folder, what)
    _make_dirs(d, d / LOCK_NAME)
    lock = d / LOCK_NAME
    _acquire(lock, what)
    try:
        yield lock
    finally:
        owner = _lock_owner(lock)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == _HOST:
            _unlink_quietly(lock)


_HOST = socket.gethostname()


def _lock_owner(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _acquire(lock: Path, what: str) -> None:
    body = json.dumps({"pid": os.getpid(), "host": _HOST, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None:
                try:
                    young = time.time() - lock.stat().st_mtime < _LOCK_EMPTY_AGE_S
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if young:  # being written by a process that just took it
                    raise ConfigError(f"{what} {lock.parent} is in use by another edgeopt run (it is "
                                      f"starting); wait for it or choose another folder") from None
            elif owner.get("host") != _HOST or pid_alive(owner["pid"]):
                who = "this process" if owner["pid"] == os.getpid() and owner.get("host") == _HOST else (
                    f"started {owner.get('started', '?')}" + ("" if owner.get("host") == _HOST
                                                             else f" on {owner.get('host')}"))
                raise ConfigError(
                    f"{what} {lock.parent} is in use by another edgeopt run (pid {owner['pid']}, {who}); "
                    f"wait for it to finish or choose another folder (if that process is gone, "
                    f"delete {lock})"
                ) from None
            _unlink_quietly(lock)  # its process is gone (killed run): take it over
            continue
        except OSError as exc:
            if exc.errno in _OUTPUT_ERRNOS:
                raise _write_error(lock, exc) from None
            raise
        try:
            os.write(fd, body.encode("utf-8"))
        finally:
            os.close(fd)
        return
    raise ConfigError(f"{what} {lock.parent}: cannot take {lock} (other runs keep taking it); "
                      "choose another folder")
