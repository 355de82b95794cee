"""Base config dataclass, YAML/JSON load and dump (safe loaders only), validation.

Every transform takes a frozen dataclass config that validates itself in
``__post_init__`` and raises :class:`~edgeopt.errors.ConfigError`. The CLI builds the
same objects a user could write in YAML; ``--dump-config`` prints them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from edgeopt.errors import ConfigError, brief

C = TypeVar("C", bound="Config")

#: Upper bound of every thread-count setting. Fixed rather than derived from
#: ``os.cpu_count()`` so that a recipe valid on one machine is valid on another; above the
#: logical CPUs of any one machine edgeopt targets (a 2-socket, 192-core SMT server has
#: 768), so only a typo exceeds it. torch/OpenMP and the runtimes start one OS thread per
#: count: ``--threads 100000`` used to hang the process instead of failing.
MAX_THREADS = 1024
#: Upper bound of every batch-size setting (images per step or per timed call): 2**20,
#: past the largest batches published for ImageNet training (~64k) and past every split
#: edgeopt loads but ImageNet-train; a bigger value is a typo that would only fail later,
#: in an allocation of gigabytes. What fits in memory is checked where the batch is built.
MAX_BATCH_SIZE = 2**20


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all configs: frozen, validated, convertible to and from dicts.

    Subclasses override :meth:`validate` and call the ``_check_*`` helpers.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class C(Config):
        ...     epochs: int = 1
        ...     def validate(self):
        ...         self._check_range("epochs", 1, None)
        >>> C.from_dict({"epochs": 3}).epochs
        3
    """

    def __post_init__(self) -> None:
        # the same type check as from_dict, so Config(per_channel="no") is refused too
        # instead of reaching the code as a truthy string
        hints = _field_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = _coerce(type(self).__name__, f.name, value, hints[f.name])
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError if a field is invalid. Subclasses override."""

    # -- helpers for validate() -------------------------------------------------------
    def _check_range(self, name: str, lo: float | None, hi: float | None) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(f"{type(self).__name__}.{name}={value!r} must be in {bounds}")

    def _check_threads(self, name: str = "threads") -> None:
        """A thread count (None allowed) in ``[1, MAX_THREADS]``, with why on failure."""
        value = getattr(self, name)
        if value is not None and not 1 <= value <= MAX_THREADS:
            raise ConfigError(
                f"{type(self).__name__}.{name}={value!r} must be in [1, {MAX_THREADS}] "
                f"(threads per process; this machine has {os.cpu_count()} CPUs)"
            )

    def _check_batch_size(self, name: str = "batch_size", lo: int = 1) -> None:
        """A batch size (None allowed) in ``[lo, MAX_BATCH_SIZE]``."""
        value = getattr(self, name)
        if value is not None and not lo <= value <= MAX_BATCH_SIZE:
            raise ConfigError(
                f"{type(self).__name__}.{name}={value!r} must be in [{lo}, {MAX_BATCH_SIZE}] "
                f"(images per batch); lower it"
            )

    def _check_choice(self, name: str, choices: typing.Iterable[str]) -> None:
        value = getattr(self, name)
        choices = list(choices)
        if value not in choices:
            raise ConfigError(
                f"{type(self).__name__}.{name}={value!r} must be one of {', '.join(map(str, choices))}"
            )

    # -- conversion -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Path):
                v = str(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
        """Build from a dict; an unknown key or a wrong type is a ConfigError."""
        data = dict(data or {})
        hints = _field_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
            )
        kwargs = {k: _coerce(cls.__name__, k, v, hints[k]) for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def dump(self, fmt: str = "yaml") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(owner: str, key: str, value: Any, hint: Any) -> Any:
    """Check and lightly convert a loaded value to the field's annotated type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(owner, key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{owner}.{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{owner}.{key}={value!r} must be one of {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{owner}.{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(owner, key, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{owner}.{key} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{owner}.{key} must be a mapping, got {value!r}")
        return hint.from_dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{owner}.{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{owner}.{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{owner}.{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}.{key} must be a string, got {value!r}")
        return value
    return value


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Load a YAML or JSON file as a dict, with ``yaml.safe_load`` only."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = brief(exc, None)
        raise ConfigError(f"cannot parse {p}: {msg}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level")
    return data


def load_config(cls: type[C], path: str | Path) -> C:
    """Load a config dataclass from a YAML/JSON file."""
    return cls.from_dict(load_mapping(path))
