"""Generate the command reference in docs/cli.md from the Typer app itself, so it cannot drift.

Run `python -m agfprune.cli.docgen > docs/cli.md`; a test checks that the file is current.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from agfprune.cli.app import app
from agfprune.core.errors import EXIT_CODES

HEADER = """# agfprune command reference

Generated from the CLI by `python -m agfprune.cli.docgen > docs/cli.md`; do not edit by hand.

## Conventions

- Results go to stdout: a rich table for people, or with `--json` exactly one JSON document. Progress bars
  and status lines go to stderr (`--quiet` silences them).
- `--config FILE.yaml` sets option defaults: top-level keys apply to every command that has such an option,
  a section named after the command (`prune: {ratio: 0.5}`) to that command only; unknown keys in a command's
  section are an error. Keys use the option names with `_` or `-` (`batch_size` or `batch-size`).
- Every file a command writes is written to a temporary name in the target folder and renamed when
  complete: an interrupted command leaves the previous file (if any) and no partial file.
- Errors print one line, `agfprune: error: <what is wrong and what would be valid>`, on stderr; `--debug`
  (before the command: `agfprune --debug eval ...`) also prints the traceback.

## Exit codes

| code | class | meaning |
|---|---|---|
"""

CODE_MEANING = {
    "ok": "success",
    "internal": "an unexpected internal error (a bug: please report it with `--debug` output)",
    "usage": "invalid option value, unknown name (model, metric, signal), conflicting options",
    "data": "data missing, empty, unreadable, or not matching the model (labels, classes)",
    "model": "model name, checkpoint or artefact unknown, corrupt, tampered, or made for another model",
    "numerical": "NaN/Inf in a loss, statistics or scores; a target that cannot be reached numerically",
    "output": "an output file cannot be written (permissions, disk full, a folder in the way)",
    "interrupted": "Ctrl-C (SIGINT); SIGTERM exits 143. No partial files are left",
}


def _param_rows(command: Any) -> list[str]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        names = ", ".join(f"`{opt}`" for opt in [*param.opts, *getattr(param, "secondary_opts", [])])
        if param.param_type_name == "argument":
            label = (getattr(param, 'metavar', None) or param.name or '').upper()
            names = f"`{label}` (argument)"
        default = param.default
        shown = "" if default is None or callable(default) or param.param_type_name == "argument" else f"`{default}`"
        help_text = (getattr(param, "help", "") or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {names} | {shown} | {help_text} |")
    return rows


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            found.extend(_commands(command, path))
        else:
            found.append((path, command))
    return found


def render() -> str:
    """The whole docs/cli.md text."""
    root = typer.main.get_command(app)
    lines = [HEADER.rstrip("\n")]
    for key, code in EXIT_CODES.items():
        lines.append(f"| {code} | {key} | {CODE_MEANING[key]} |")
    lines.append("")
    lines.append("## Commands")
    for path, command in _commands(root, "agfprune"):
        lines.append("")
        lines.append(f"### `{path}`")
        lines.append("")
        lines.append((command.help or "").strip().split("\n\n")[0].replace("\n", " "))
        lines.append("")
        lines.append("| option | default | meaning |")
        lines.append("|---|---|---|")
        lines.extend(_param_rows(command))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
