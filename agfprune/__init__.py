"""agfprune: structural pruning and hybrid routing of vision networks, guided by AGF.

Python API (see docs/python.md): `prune`, `save`, `load`, `load_router`. Imports are lazy so that
`import agfprune` and the CLI start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agfprune.core.version import __version__


def prune(model: Any, example_inputs: Any, **options: Any) -> tuple[Any, Any]:
    """Structurally prune a copy of any nn.Module: `pruned, record = agfprune.prune(model, x, ratio=0.5,
    metric="agf", data=loader)`. Options as in `agfprune.core.api.prune` (docs/python.md)."""
    from agfprune.core.api import prune as _prune

    return _prune(model, example_inputs, **options)


def save(model: Any, path: str | Path) -> str:
    """Write a (pruned) model as a self-describing .safetensors checkpoint; returns its fingerprint."""
    from agfprune.core.api import save as _save

    return _save(model, path)


def load(path: str | Path, model: Any = None, device: str = "cpu") -> Any:
    """Rebuild a model (dense or pruned) from a checkpoint: by its recorded timm name, or onto
    `model=MyNet()`, a fresh instance of the user's own class; returns the nn.Module."""
    from agfprune.core.api import load as _load

    return _load(path, model=model, device=device)


def load_router(path: str, device: str = "cpu") -> Any:
    """Build the deployable Cascade module described by a router.yaml."""
    from agfprune.core.routing import load_router as _load_router

    return _load_router(path, device=device)
