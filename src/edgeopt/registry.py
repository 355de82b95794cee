"""One generic registry: name -> factory.

Models, datasets, exporters, runners (and later importance scores and KD losses) are
registered by name. Listing a registry is how the CLI shows choices and how tests
parametrize. A duplicate name is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgeopt.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory mapping with help text.

    Example:
        >>> r = Registry("colour")
        >>> @r.register("red", help="the colour red")
        ... def red():
        ...     return "#f00"
        >>> r.get("red")()
        '#f00'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate raises ConfigError."""

        def deco(obj: T) -> T:
            self.add(name, obj, help=help)
            return obj

        return deco

    def add(self, name: str, obj: T, help: str = "") -> None:
        if name in self._items:
            raise ConfigError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj
        doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
        self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")

    def get(self, name: str) -> T:
        """The factory registered under ``name``; an unknown name lists the choices."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'.{hint} Choices: {', '.join(self.names())}"
            ) from None

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
