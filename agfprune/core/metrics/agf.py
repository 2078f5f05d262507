"""AGF: mean over batches, samples and positions of |a * dL/da| (absolute value before averaging)."""

from __future__ import annotations

import torch

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import LayerSlice, Metric, take


@register_metric("agf")
class AgfMetric(Metric):
    """Activation-gradient first-order utility of each structure's output feature."""

    requires_stats = True
    summary = "mean |a * dL/da| over samples and positions (abs before averaging)"

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        values = self.stats.agf(item.name, item.side)
        return None if values is None else take(values, item.idxs, f"AGF statistics of {item.name}")
