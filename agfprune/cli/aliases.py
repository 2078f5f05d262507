"""Old option spellings, still accepted (hidden from --help) with a deprecation note on stderr.

One table, read by the argument rewriter (`run` in app.py), by `--config` (old keys) and by the
generated reference (docs/cli.md lists them), so that a renamed option keeps working everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# command path -> {old spelling: current option}
DEPRECATED: dict[tuple[str, ...], dict[str, str]] = {
    ("calibrate",): {"--batches": "--calib-batches", "--batch-size": "--calib-batch-size", "-b": "--calib-batch-size",
                     "--target": "--calib-loss"},
    ("prune",): {"--calib-target": "--calib-loss", "--bn-recalibrate": "--bn-batches",
                 "--batch-size": "--calib-batch-size", "-b": "--calib-batch-size"},
    ("score",): {"--metric": "--metrics"},
    ("finetune",): {"--val": "--eval-data", "--val-limit": "--eval-limit"},
    ("compare",): {"--calib-data": "--data"},
    ("route", "eval"): {"-r": "--router"},
    ("route", "export"): {"-r": "--router"},
}
ROOT_FLAGS = {"--debug", "--version", "-h", "--help"}
SUBAPPS = {"route"}


def command_path(args: Sequence[str]) -> tuple[str, ...]:
    """('prune',) or ('route', 'eval') from argv, skipping the root's own flags."""
    path: list[str] = []
    for token in args:
        if token in ROOT_FLAGS or token.startswith("-"):
            if path:
                break
            continue
        path.append(token)
        if path[0] not in SUBAPPS or len(path) == 2:
            break
    return tuple(path)


def rewrite_deprecated(args: list[str]) -> tuple[list[str], list[str]]:
    """Replace old spellings by the current ones; returns the new argv and one note per old spelling."""
    path = command_path(args)
    table = DEPRECATED.get(path, {})
    if not table:
        return args, []
    start = next((i for i, token in enumerate(args) if token == path[-1]), -1) + 1
    rewritten, notes = list(args[:start]), []
    for token in args[start:]:
        name, eq, value = token.partition("=")
        if name in table and token.startswith("-"):
            current = table[name]
            notes.append(f"{name} is deprecated, use {current} (agfprune {' '.join(path)})")
            token = current + eq + value
        rewritten.append(token)
    return rewritten, notes


def deprecated_config_keys(path: Sequence[str]) -> dict[str, str]:
    """Old spellings as --config keys (`batches` -> `calib_batches`) for one command."""
    return {old.lstrip("-").replace("-", "_"): new.lstrip("-").replace("-", "_")
            for old, new in DEPRECATED.get(tuple(path), {}).items() if old.startswith("--")}


def note(message: str) -> None:
    sys.stderr.write(f"agfprune: note: {message}\n")
