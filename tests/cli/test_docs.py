"""docs/cli.md is generated from the CLI; it must match what the CLI says today."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    from agfprune.cli.docgen import render

    assert DOC.exists(), "docs/cli.md is missing: run `python -m agfprune.cli.docgen > docs/cli.md`"
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date: run `python -m agfprune.cli.docgen > docs/cli.md`")


def test_cli_reference_covers_every_command_exit_code_and_artefact() -> None:
    from agfprune.cli.docgen import render
    from agfprune.core.errors import EXIT_CODES

    text = render()
    for command in ("eval", "info", "demo", "calibrate", "score", "prune", "finetune", "export", "compare",
                    "route calibrate", "route eval", "route export"):
        assert f"### `agfprune {command}`" in text, command
    for code in EXIT_CODES.values():
        assert f"| {code} |" in text
    for name in ("agfprune-checkpoint", "agfprune-calibration", "agfprune-scores", "agfprune-finetune-state",
                 "agfprune-router", "agfprune-export", "agfprune-compare"):
        assert name in text, name


def _documented_invocations() -> list[tuple[str, list[str]]]:
    """(file, argv after `agfprune`) of every command in a fenced block of the README and docs/."""
    import re
    import shlex

    root = DOC.parents[1]
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if path == DOC:
            continue
        blocks = re.findall(r"```[a-z]*\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0]
                match = re.search(r"(?:^|\s)(?:python -m )?agfprune\s+(.*)", line)
                if match:
                    try:
                        found.append((path.name, shlex.split(match.group(1))))
                    except ValueError:
                        found.append((path.name, match.group(1).split()))
    return found


def test_docs_use_current_option_spellings() -> None:
    """The README and docs teach the current names, never a deprecated alias (those are for old scripts)."""
    from agfprune.cli.aliases import DEPRECATED, command_path

    invocations = _documented_invocations()
    assert len(invocations) > 20  # the parser finds the examples
    stale = []
    for name, argv in invocations:
        table = DEPRECATED.get(command_path(argv), {})
        stale += [f"{name}: agfprune {' '.join(argv[:2])} … {token}" for token in argv
                  if token.partition("=")[0] in table]
    assert not stale, "deprecated spellings in docs:\n" + "\n".join(stale)
