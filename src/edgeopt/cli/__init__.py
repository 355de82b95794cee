"""The ``edgeopt`` command line. ``main()`` turns edgeopt's errors into one line and exit 2."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; an EdgeoptError prints ``ErrorName: message`` on stderr and returns 2."""
    from edgeopt.cli.app import app
    from edgeopt.errors import EdgeoptError

    try:
        app(args=argv, prog_name="edgeopt")
    except SystemExit as exc:  # typer/click exits normally this way
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except EdgeoptError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished steps are kept; re-run with --resume to continue", file=sys.stderr)
        return 130
    return 0


__all__ = ["main"]


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
