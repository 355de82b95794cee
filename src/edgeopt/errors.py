"""The error types users see.

Every error edgeopt raises on bad input is one of these. Each carries a one-line
message that says what is wrong and what to do; the CLI prints ``Name: message``
and exits with status 2, never a stack trace.
"""

from __future__ import annotations


def brief(exc: BaseException, limit: int | None = 300) -> str:
    r"""A library exception's message on one line, cut to ``limit`` characters, for
    embedding in an edgeopt error.

    Example:
        >>> brief(ValueError("bad\n   shape  (1, 2)"))
        'bad shape (1, 2)'
        >>> brief(ValueError("x" * 500), 10)
        'xxxxxxxxxx'
    """
    text = " ".join(str(exc).split())
    return text if limit is None else text[:limit]


class EdgeoptError(Exception):
    """Base class of every error edgeopt raises on purpose."""

    exit_code = 2

    def one_line(self) -> str:
        """The message as one line, for the terminal."""
        text = " ".join(str(self).split())
        return f"{type(self).__name__}: {text}"


class ConfigError(EdgeoptError, ValueError):
    """A configuration value is invalid (raised before any work starts)."""


class DataError(EdgeoptError):
    """A dataset path, format or split is wrong."""


class ModelLoadError(EdgeoptError):
    """A checkpoint is missing, corrupt, foreign, or does not fit the architecture."""


class UnsupportedModelError(EdgeoptError):
    """The model has a layer or shape that a backend cannot handle."""


class UntrustedCodeError(EdgeoptError):
    """A file (sidecar, config) names model code (``package.module:factory``) that the user
    did not allow; files never make edgeopt import or run code."""


class MissingDependencyError(EdgeoptError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class ExportMismatchError(EdgeoptError):
    """An exported artifact's outputs differ from the PyTorch model beyond tolerance."""


class ArtifactError(EdgeoptError):
    """An artifact file is missing, corrupt, truncated or does not match the data."""


class NumericalError(EdgeoptError):
    """NaN or Inf appeared in weights, inputs or the loss."""


class EdgeoptWarning(UserWarning):
    """Work went on, but a result may not mean what it seems (e.g. accuracy on one class).

    The CLI prints these as one ``warning: message`` line on stderr.
    """


class OutputError(EdgeoptError, OSError):
    """An output file cannot be written: the disk is full, the file system is read-only,
    or permission is denied. Nothing partial is left and an older file is kept."""


def note_interrupt(exc: BaseException, text: str, *, override: bool = False) -> None:
    """Attach what an interrupted job kept (and how to continue) to a KeyboardInterrupt.

    The innermost layer that knows says it (the Trainer: "re-run with --resume"); an outer
    layer with other rules (the pipeline) may ``override`` it. The CLI prints it.

    Example:
        >>> e = KeyboardInterrupt(); note_interrupt(e, "interrupted: nothing was written")
        >>> interrupt_note(e)
        'interrupted: nothing was written'
    """
    if override or not getattr(exc, "edgeopt_note", None):
        exc.edgeopt_note = text  # type: ignore[attr-defined]


def interrupt_note(exc: BaseException) -> str | None:
    """The note :func:`note_interrupt` attached, or None."""
    return getattr(exc, "edgeopt_note", None)


def require(module: str, extra: str, what: str):
    """Import an optional module or raise MissingDependencyError with the pip command.

    Args:
        module: the module to import, e.g. ``"openvino"``.
        extra: the edgeopt extra that installs it, e.g. ``"openvino"``.
        what: what needs it, e.g. ``"OpenVINO export"``.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: if the module cannot be imported.

    Example:
        >>> np = require("numpy", "dev", "the tests")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{what} needs the '{extra}' extra: pip install \"edgeopt[{extra}]\" ({exc})"
        ) from exc
