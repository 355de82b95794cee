"""edgeopt._io and edgeopt._outputs: atomic writes fail cleanly (full disk, read-only), clean their temporaries,
give files the umask's mode, check output folders up front, and lock a run's folder."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeopt._io import atomic_path, remove_stale_temps, write_text_atomic, write_with_atomic
from edgeopt._outputs import LOCK_NAME, dir_lock, ensure_writable_dir, ensure_writable_file
from edgeopt.errors import ConfigError, OutputError

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def umask():
    """Set the umask for one test and put it back."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


# -- case 4: modes ---------------------------------------------------------------------------
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_has_the_mode_open_would_give(tmp_path, umask, mask, mode):
    umask(mask)
    p = write_text_atomic(tmp_path / "a.json", "{}")
    assert os.stat(p).st_mode & 0o777 == mode
    # a writer that creates its file 0600 itself (safetensors does) gets the same mode
    q = write_with_atomic(tmp_path / "b.bin", lambda t: (t.unlink(), os.close(os.open(t, os.O_CREAT | os.O_WRONLY, 0o600))))
    assert os.stat(q).st_mode & 0o777 == mode


def test_checkpoint_is_not_0600_and_a_replaced_file_keeps_its_mode(tmp_path, umask):
    import torch

    from edgeopt.models import save_checkpoint
    from edgeopt.spec import ModelSpec, attach_spec

    umask(0o022)
    m = attach_spec(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), ModelSpec((1, 2, 2), 2, (0.5,), (0.25,)))
    p = save_checkpoint(tmp_path / "m", m)
    assert os.stat(p).st_mode & 0o777 == 0o644  # safetensors alone would give 0600
    os.chmod(p, 0o640)
    save_checkpoint(tmp_path / "m", m)
    assert os.stat(p).st_mode & 0o777 == 0o640  # as open() on an existing file keeps it


# -- case 2: full disk, read-only ------------------------------------------------------------
def test_full_disk_is_one_output_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as ei:
        write_with_atomic(target, writer)
    assert "no space left on device" in ei.value.one_line() and str(target) in str(ei.value)
    assert isinstance(ei.value, OSError) and ei.value.exit_code == 2
    assert target.read_bytes() == b"old"
    assert hidden(tmp_path) == []  # the temporary file is gone


def test_a_library_error_wrapping_enospc_or_on_a_full_disk_is_an_output_error(tmp_path, monkeypatch):
    def wrapped(tmp: Path) -> None:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as exc:
            raise RuntimeError("serializer failed") from exc

    with pytest.raises(OutputError, match="disk quota exceeded"):
        write_with_atomic(tmp_path / "a.bin", wrapped)

    # torch's "file write failed" carries no errno: a (nearly) full file system says it
    import edgeopt._io as io

    monkeypatch.setattr(io, "_no_room", lambda folder: True)

    def torch_like(tmp: Path) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    with pytest.raises(OutputError, match="no space left on device"):
        write_with_atomic(tmp_path / "b.pt", torch_like)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_and_remove_the_temporary(tmp_path):
    with pytest.raises(ValueError, match="bug"):
        write_with_atomic(tmp_path / "x", lambda t: (t.write_bytes(b"x"), (_ for _ in ()).throw(ValueError("bug"))))
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "y") as tmp:
        tmp.write_bytes(b"y")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_read_only_file_system_is_one_output_error(tmp_path, monkeypatch):
    real_open = os.open

    def ro_open(path, flags, *args, **kw):
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", ro_open)
    (tmp_path / "r.json").write_text("old")
    with pytest.raises(OutputError, match="read-only file system"):
        write_text_atomic(tmp_path / "r.json", "new")
    assert (tmp_path / "r.json").read_text() == "old" and hidden(tmp_path) == []


@pytest.mark.skipif(ROOT, reason="root writes into a chmod'ed folder anyway")
def test_read_only_folder_is_a_config_error_before_and_an_output_error_during(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.json").write_text("old")
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            ensure_writable_dir(ro / "run", "out_dir")
        with pytest.raises(OutputError, match="permission denied"):
            write_text_atomic(ro / "old.json", "new")
        assert (ro / "old.json").read_text() == "old" and sorted(os.listdir(ro)) == ["old.json"]
    finally:
        ro.chmod(0o755)


def test_unwritable_folder_is_a_config_error_before_any_work(tmp_path, monkeypatch):
    """What the chmod test checks, for root too (root may write anywhere but a read-only fs)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw))
    with pytest.raises(ConfigError, match=r"out_dir .*ro/run: .*ro is not writable \(permission denied\)"):
        ensure_writable_dir(ro / "run", "out_dir")
    assert list(ro.iterdir()) == []


# -- case 1: an output path under a file --------------------------------------------------------
def test_output_folder_under_a_file_is_a_config_error_and_creates_nothing(tmp_path):
    f = tmp_path / "some_file"
    f.write_text("keep")
    for path in (f, f / "x", f / "x" / "y"):
        with pytest.raises(ConfigError, match="is a file, not a folder") as ei:
            ensure_writable_dir(path, "out_dir")
        assert "\n" not in ei.value.one_line() and str(path) in str(ei.value)
    with pytest.raises(ConfigError, match="some_file is a file, not a folder"):
        ensure_writable_file(f / "y.onnx", "output file")
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        ensure_writable_file(tmp_path, "output file")
    assert ensure_writable_file(tmp_path / "new" / "m.onnx") == tmp_path / "new" / "m.onnx"
    # the write itself says the same, instead of NotADirectoryError
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        write_text_atomic(f / "x" / "r.json", "{}")
    assert sorted(os.listdir(tmp_path)) == ["some_file"] and f.read_text() == "keep"


# -- case 3: temporaries of killed writers -----------------------------------------------------
def test_next_write_removes_temporaries_of_dead_writers_only(tmp_path):
    dead = dead_pid()
    stale = tmp_path / f".m.onnx.p{dead}-0a1b2c3d.tmp"
    live = tmp_path / f".m.onnx.p{os.getppid()}-0a1b2c3d.tmp"  # our parent is alive
    other = tmp_path / f".m.onnx.edgeopt.json.p{dead}-0a1b2c3d.tmp"  # another file's temp
    old_legacy = tmp_path / ".m.onnx.ab_12xyz.tmp"  # mkstemp's name, no pid
    new_legacy = tmp_path / ".m.onnx.cd_34xyz.tmp"
    for p in (stale, live, other, old_legacy, new_legacy):
        p.write_bytes(b"")
    hour_ago = time.time() - 3600
    os.utime(old_legacy, (hour_ago, hour_ago))

    write_text_atomic(tmp_path / "m.onnx", "x")
    left = set(hidden(tmp_path))
    assert stale.name not in left and old_legacy.name not in left
    assert {live.name, other.name, new_legacy.name} <= left
    assert remove_stale_temps(tmp_path / "m.onnx.edgeopt.json") == [other]


# -- case 6: one run per folder -----------------------------------------------------------------
def test_dir_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_NAME).write_text(f'{{"pid": {sleeper.pid}, "host": "{socket.gethostname()}", '
                                     '"started": "2025-01-01 00:00:00"}')
        with pytest.raises(ConfigError) as ei, dir_lock(out, "out_dir"):
            pass
        msg = ei.value.one_line()
        assert f"pid {sleeper.pid}" in msg and str(out) in msg and "in use by another edgeopt run" in msg
    finally:
        sleeper.kill()
        sleeper.wait()
    # its process is gone now: the lock is taken over, and released after
    with dir_lock(out, "out_dir") as lock:
        assert f'"pid": {os.getpid()}' in lock.read_text()
        with pytest.raises(ConfigError, match="this process"), dir_lock(out, "out_dir"):
            pass
    assert not (out / LOCK_NAME).exists()


def test_dir_lock_checks_the_folder_first(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"), dir_lock(tmp_path / "f" / "run"):
        pass
