"""One registry helper for everything a user names: metrics, routing signals, export formats.

A `Registry` maps the names users type to what they name (a class, a function, a record). It is a
read-only `Mapping`, so `name in registry`, `registry[name]` and `sorted(registry)` work as on a
dict; entries come in through `register`/`decorator` only, each name once, and `check`/`lookup`
raise the one-line UsageError its owner words (`{name!r}` and `{valid}` are filled in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from agfprune.core.errors import UsageError

T = TypeVar("T")
D = TypeVar("D")


class Registry(Mapping[str, T], Generic[T]):
    """Names → entries, with one registration rule and one unknown-name error.

    `unknown`: the UsageError text for an unknown name, e.g. "unknown metric {name!r}; valid
    metrics: {valid}". `discover`: called once before the first read (imports the modules that
    register). `sort`: list names alphabetically instead of in registration order. `chain`: a
    read-only view over other registries (their names in turn; `register` is refused).
    """

    def __init__(self, what: str, unknown: str, *, discover: Callable[[], None] | None = None,
                 sort: bool = False, chain: tuple[Registry, ...] = ()) -> None:
        self.what = what
        self.unknown = unknown
        self._discover = discover
        self._sort = sort
        self._chain = chain
        self._entries: dict[str, T] = {}

    def _ready(self) -> None:
        if self._discover is not None:
            discover, self._discover = self._discover, None
            discover()

    def register(self, name: str, entry: T) -> T:
        """Add `entry` under `name`; registering another entry under a taken name is a bug (ValueError)."""
        if self._chain:
            raise ValueError(f"{self.what} registry is a view over others; register there")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, wrap: Callable[[D], T] | None = None) -> Callable[[D], D]:
        """A decorator registering what it decorates (or `wrap(it)`) under `name`; returns it unchanged."""

        def decorate(thing: D) -> D:
            self.register(name, wrap(thing) if wrap is not None else thing)  # type: ignore[arg-type]
            return thing

        return decorate

    def names(self) -> list[str]:
        """Every registered name, in registration (or alphabetical) order; a chain: each part's in turn."""
        if self._chain:
            return [name for part in self._chain for name in part.names()]
        self._ready()
        return sorted(self._entries) if self._sort else list(self._entries)

    def check(self, name: str) -> str:
        """`name` if registered; a one-line UsageError listing the valid names otherwise."""
        if name not in self:
            raise UsageError(self.unknown.format(name=name, valid=", ".join(self.names())))
        return name

    def lookup(self, name: str) -> T:
        """The entry under `name`; the registry's UsageError if there is none."""
        return self[self.check(name)]

    def __getitem__(self, name: str) -> T:
        for part in self._chain:
            if name in part:
                return part[name]
        self._ready()
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        if self._chain:
            return any(name in part for part in self._chain)
        self._ready()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self.names())})"
