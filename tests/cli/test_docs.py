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
