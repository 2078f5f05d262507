"""agfprune: structural pruning and hybrid routing of vision networks, guided by AGF."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: str, device: str = "cpu") -> Any:
    """Rebuild a model (dense or pruned) from a checkpoint file alone; returns the nn.Module."""
    from agfprune.core.models import load_model

    return load_model(checkpoint=path, device=device).model


def load_router(path: str, device: str = "cpu") -> Any:
    """Build the deployable Cascade module described by a router.yaml."""
    from agfprune.core.routing import load_router as _load_router

    return _load_router(path, device=device)
