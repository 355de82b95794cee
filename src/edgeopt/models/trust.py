"""Which model code may run: only what the user names, never what a file says.

A checkpoint's sidecar and a YAML config are data: they may come from the internet. They may
name registered zoo models and ``tv:NAME`` freely, but a ``package.module:factory`` imports a
module and calls a function, so it runs only when the user allows it in this process:

* by naming it on the command line (``edgeopt train --model my_pkg.nets:build``) or in a
  Python call (``create_model("my_pkg.nets:build", spec)``, ``load_checkpoint(p,
  arch="my_pkg.nets:build")``);
* with ``--trust-model-code`` / ``load_checkpoint(p, trust_model_code=True)`` for one command;
* with ``EDGEOPT_TRUSTED_MODULES=my_pkg,other_pkg.nets`` (module prefixes) for a shell session;
* with :func:`allow_model_code` in Python.

The same rule as ``torch.load(weights_only=True)``: a file cannot make edgeopt run code.
(Cf. Hugging Face ``trust_remote_code``.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from edgeopt.errors import UntrustedCodeError

ENV = "EDGEOPT_TRUSTED_MODULES"
_ALL = "*"
_allowed: set[str] = set()  # factory names ("pkg.mod:f"), module prefixes ("pkg") or "*"


def _module_of(name: str) -> str:
    return name.partition(":")[0]


def allow_model_code(name: str = _ALL) -> None:
    """Allow a user factory (``pkg.mod:factory``), a module prefix (``pkg``) or, with
    ``"*"``, every factory, for the rest of this process.

    Example:
        >>> allow_model_code("my_pkg.nets:build"); is_model_code_allowed("my_pkg.nets:build")
        True
        >>> reset_model_code_trust()
    """
    if not isinstance(name, str) or not name.strip():
        raise UntrustedCodeError("allow_model_code needs a factory name, a module or '*'")
    _allowed.add(name.strip())


def reset_model_code_trust() -> None:
    """Forget every :func:`allow_model_code` (the environment variable still counts)."""
    _allowed.clear()


@contextmanager
def trusted_model_code(*names: str) -> Iterator[None]:
    """Allow ``names`` (default: all) inside a ``with`` block, then restore the previous set.

    Example:
        >>> with trusted_model_code("my_pkg.nets:build"):
        ...     is_model_code_allowed("my_pkg.nets:build")
        True
        >>> is_model_code_allowed("my_pkg.nets:build")
        False
    """
    before = set(_allowed)
    for n in names or (_ALL,):
        allow_model_code(n)
    try:
        yield
    finally:
        _allowed.clear()
        _allowed.update(before)


def _env_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]


def is_model_code_allowed(name: str) -> bool:
    """True when the factory ``name`` may be imported and called in this process."""
    module = _module_of(name)
    for entry in [*_allowed, *_env_modules()]:
        if entry == _ALL or entry == name:
            return True
        if ":" not in entry and (module == entry or module.startswith(entry + ".")):
            return True
    return False


def trusted_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child process (e.g. the memory probe) that trusts what this one does."""
    entries = sorted(set(_env_modules()) | _allowed)
    out = dict(env)
    if entries:
        out[ENV] = ",".join(entries)
    return out


def check_model_code(name: str, source: str) -> None:
    """Raise :class:`UntrustedCodeError` when ``source`` (a file) names a factory not allowed.

    Args:
        name: the model name the file gives (only ``pkg.mod:factory`` names are checked).
        source: what named it, for the message, e.g. ``"runs/x/best.json"``.

    Raises:
        UntrustedCodeError: the factory is not allowed; the message says how to allow it.

    Example:
        >>> check_model_code("resnet20", "best.json")  # zoo names are data, always fine
        >>> check_model_code("os:system", "best.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        edgeopt.errors.UntrustedCodeError: best.json asks to import and run 'os:system'; ...
    """
    from edgeopt.models.torchvision_models import PREFIX as TV_PREFIX
    from edgeopt.models.user_models import is_user_model

    # tv:NAME looks like module:factory but create_model builds it from torchvision's own
    # registry of classification models; nothing named by the file is imported.
    if name.startswith(TV_PREFIX) or not is_user_model(name) or is_model_code_allowed(name):
        return
    raise UntrustedCodeError(
        f"{source} asks to import and run '{name}'; edgeopt never runs code that a file names. "
        f"If you trust that code, name it yourself: --model {name} (or --trust-model-code, "
        f"or {ENV}={_module_of(name)}; in Python edgeopt.models.allow_model_code('{name}'))"
    )
