"""Helpers for tests that run the ``edgeopt`` command in-process (imported as ``_cli``)."""

from __future__ import annotations

from edgeopt.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``edgeopt ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single non-empty line of ``err``; fails if there are more or a traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
