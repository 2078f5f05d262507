"""Glue from parsed options to core objects, shared by the commands (no numerical work here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from agfprune.cli.options import parse_floats


def load_model_from_options(model: Optional[str], checkpoint: Optional[Path], pretrained: bool,
                            device: Any) -> Any:
    """LoadedModel from --model/--checkpoint/--pretrained."""
    from agfprune.core.models import load_model

    return load_model(model, checkpoint, pretrained=pretrained, device=device)


def data_overrides(img_size: Optional[int], mean: Optional[str], std: Optional[str]) -> Any:
    """DataOverrides from --img-size/--mean/--std, validated before anything is loaded."""
    from agfprune.core.data import DataOverrides

    overrides = DataOverrides(img_size, parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    overrides.validate()
    return overrides
