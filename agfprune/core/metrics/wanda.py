"""Structured Wanda (Sun et al. 2023): ||X_c||_2 * sum_i |W[i, c]| over the consumers of channel c."""

from __future__ import annotations

import torch

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import ActivationWeightedMetric, LayerSlice, in_channel_view


@register_metric("wanda")
class WandaMetric(ActivationWeightedMetric):
    """Weights times input activation norms, summed over each input channel's consumers."""

    summary = "||X_c||_2 * sum_i |W_ic| over the consumers of channel c"
    # chosen on the select half of CIFAR-10 val (ResNet-20, 75 % of params, global): raw 26.7 % vs
    # per-group mean 21.5 % and max 11.9 % (docs/pruning.md, "Allocation, measured")
    default_normalizer = "none"

    def weight_term(self, item: LayerSlice) -> torch.Tensor:
        return in_channel_view(item.module.weight.detach().abs(), item.module).sum(1)
