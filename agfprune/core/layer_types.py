"""The layer kinds agfprune reasons about, named once (calibration, metrics and groups all ask here)."""

from __future__ import annotations

import torch.nn as nn

NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
WEIGHT_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)


def is_frozen(module: nn.Module) -> bool:
    """A layer whose weights never train (e.g. the option-A shortcut): a fixed re-indexing, not a
    structure whose removal the loss can price."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and not weight.requires_grad


def channels_last(module: nn.Module) -> bool:
    """Whether the module's outputs hold channels in the last dimension (tokens) or in dim 1 (NCHW)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.LayerNorm)
                                             and not type(module).__name__.endswith("2d"))
