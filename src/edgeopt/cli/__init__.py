"""The ``edgeopt`` command line. ``main()`` turns edgeopt's errors into one line and exit 2."""

from __future__ import annotations

import contextlib
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; an EdgeoptError prints ``ErrorName: message`` on stderr and returns 2."""
    from edgeopt.cli.app import app
    from edgeopt.errors import EdgeoptError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with _one_line_warnings():
            app(args=args, prog_name="edgeopt")
    except SystemExit as exc:  # typer/click exits normally this way
        # typer turns Ctrl-C into a silent exit 130 (Exit(130) from the KeyboardInterrupt)
        interrupt = _interrupt_in(exc)
        if interrupt is not None:
            return _interrupted(interrupt, args)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except EdgeoptError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc, args)
    return 0


@contextlib.contextmanager
def _one_line_warnings():
    """Show edgeopt's own warnings (EdgeoptWarning) as one ``warning: message`` line on
    stderr, not Python's two-line ``file:line: Category: message`` form."""
    import warnings

    from edgeopt.errors import EdgeoptWarning

    with warnings.catch_warnings():  # restores showwarning and the filters afterwards
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, EdgeoptWarning):
                print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


# What an interrupted command kept, when the layer that was running attached no note
# (edgeopt.errors.note_interrupt): every file is written whole or not at all (_io).
_INTERRUPTED = {
    "train": "interrupted before training started; nothing was written",
}
_INTERRUPTED_DEFAULT = ("interrupted: nothing partial was written (files are written whole or not at all); "
                        "re-run the command to start again")


def _interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that caused ``exc`` (through __cause__/__context__), if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _interrupted(exc: KeyboardInterrupt, args: list[str]) -> int:
    """Print one truthful line about what was kept; return 130 (128 + SIGINT)."""
    from edgeopt.errors import interrupt_note

    command = next((a for a in args if not a.startswith("-")), "")
    note = interrupt_note(exc) or _INTERRUPTED.get(command, _INTERRUPTED_DEFAULT)
    print(note, file=sys.stderr, flush=True)
    return 130


__all__ = ["main"]


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
