"""Taylor (Molchanov et al. 2017): per sample |sum over positions of a * dL/da|, averaged."""

from __future__ import annotations

import torch

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import LayerSlice, Metric, take


@register_metric("taylor")
class TaylorMetric(Metric):
    """First-order Taylor estimate of the loss change when a feature map is removed."""

    requires_stats = True
    summary = "mean over samples of |sum over positions of a * dL/da| (Molchanov 2017)"

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        values = self.stats.taylor(item.name, item.side)
        return None if values is None else take(values, item.idxs, f"Taylor statistics of {item.name}")
