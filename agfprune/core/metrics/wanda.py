"""Structured Wanda (Sun et al. 2023): ||X_c||_2 * sum_i |W[i, c]| over the consumers of channel c."""

from __future__ import annotations

import torch

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import LayerSlice, Metric, in_channel_view, take


@register_metric("wanda")
class WandaMetric(Metric):
    """Weights times input activation norms, summed over each input channel's consumers."""

    requires_stats = True
    summary = "||X_c||_2 * sum_i |W_ic| over the consumers of channel c"

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        if item.side != "in":
            return None
        norms = self.stats.input_norm(item.name)
        if norms is None:
            return None
        column_sums = in_channel_view(item.module.weight.detach().abs(), item.module).sum(1)
        column_sums = take(column_sums.to(norms.dtype).cpu(), item.idxs, f"weights of {item.name}")
        return take(norms, item.idxs, f"input statistics of {item.name}") * column_sums
