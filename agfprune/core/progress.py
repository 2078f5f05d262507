"""A progress interface the engine reports to, so that core never depends on the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """No-op progress reporter; the CLI passes a rich-based subclass."""

    def track(self, iterable: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
        yield from iterable

    def log(self, message: str) -> None:
        """A status line for the user (stderr in the CLI); silent by default."""


SILENT = Progress()
