"""Structured RIA (Zhang et al. 2024, Relative Importance and Activations):
sum_i (|W_ic| / sum_i' |W_i'c| + |W_ic| / sum_c' |W_ic'|) * ||X_c||_2 ** 0.5 over consumers."""

from __future__ import annotations

import torch
import torch.nn as nn

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import ActivationWeightedMetric, LayerSlice


def relative_importance(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Per input channel c: sum over outputs i of |W_ic|/colsum_c + |W_ic|/rowsum_i (kernel summed)."""
    magnitude = weight.detach().abs()
    if isinstance(module, nn.Linear):
        blocks = magnitude.reshape(1, *magnitude.shape)  # (groups=1, out, in)
    else:
        groups = int(getattr(module, "groups", 1))
        if getattr(module, "transposed", False):
            magnitude = magnitude.transpose(0, 1)
        out_channels, in_per_group = magnitude.shape[0], magnitude.shape[1]
        blocks = magnitude.reshape(groups, out_channels // groups, in_per_group, -1).sum(-1)
    column = blocks / blocks.sum(dim=1, keepdim=True).clamp_min(1e-12)  # over outputs i' of channel c
    row = blocks / blocks.sum(dim=2, keepdim=True).clamp_min(1e-12)  # over inputs c' of output i
    return (column + row).sum(dim=1).reshape(-1)


@register_metric("ria")
class RiaMetric(ActivationWeightedMetric):
    """Relative weight importance (row and column normalised) times sqrt of input norms."""

    summary = "sum_i (|W_ic|/sum_i'|W_i'c| + |W_ic|/sum_c'|W_ic'|) * ||X_c||_2^0.5"
    norm_power = 0.5

    def weight_term(self, item: LayerSlice) -> torch.Tensor:
        return relative_importance(item.module.weight, item.module)
