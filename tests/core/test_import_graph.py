"""Core never imports upward: no module under agfprune/core imports the CLI or the package root
(`agfprune`, whose lazy API wraps core); only `agfprune.core...`."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "agfprune" / "core"


def upward_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of `agfprune` or `agfprune.<not core>` (also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names
                  if name == "agfprune" or (name.startswith("agfprune.") and not name.startswith("agfprune.core"))]
    return found


def test_core_imports_nothing_above_core() -> None:
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 20
    problems = [f"{path.relative_to(CORE.parents[1])}:{line}: imports {name}"
                for path in modules for line, name in upward_imports(path.read_text())]
    assert problems == []


def test_the_check_flags_upward_imports() -> None:
    source = ("from agfprune import __version__\nimport agfprune.cli.app\nfrom agfprune.core import errors\n"
              "def f():\n    import agfprune\n    from . import sibling\n")
    assert upward_imports(source) == [(1, "agfprune"), (2, "agfprune.cli.app"), (5, "agfprune")]
