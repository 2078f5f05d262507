"""Where things are printed: results on stdout (rich table or one JSON document), the rest on stderr."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from agfprune.core.progress import Progress

T = TypeVar("T")

# Piped or redirected, rich would squeeze tables into 80 columns and cut cells ("magni…"); there every
# table keeps its natural width, so `agfprune ... | less -S` or `> file` stay readable.
PIPED_WIDTH = 1000
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)
stderr = Console(stderr=True, soft_wrap=True)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout (NaN/Inf become null)."""
    sys.stdout.write(json.dumps(_json_safe(document), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table with right-aligned numbers."""
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column, overflow="fold")  # on a narrow terminal: wrap, never cut to "…"
    for row in rows:
        result.add_row(*[fmt(v) for v in row])
    return result


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    # a non-UTF-8 file name (lone surrogates) is shown escaped instead of failing to print
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def key_value_table(title: str, items: dict[str, Any]) -> Table:
    return table(title, ["field", "value"], items.items())


class RichProgress(Progress):
    """Progress bars and status lines on stderr; silent with --quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def track(self, iterable: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
        if self.quiet:
            yield from iterable
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichBar,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        with RichBar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in iterable:
                yield item
                bar.advance(task)

    def log(self, message: str) -> None:
        if not self.quiet:
            stderr.print(message, highlight=False, markup=False)
