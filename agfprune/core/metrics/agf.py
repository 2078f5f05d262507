"""AGF: mean over batches, samples and positions of |a * dL/da| (absolute value before averaging),
read at each group's removal sites and summed over them (loss units, comparable across layers)."""

from __future__ import annotations

import torch

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import SiteMetric, SiteSlice


@register_metric("agf")
class AgfMetric(SiteMetric):
    """Activation-gradient first-order utility of each structure, where its removal acts."""

    summary = "mean |a * dL/da| over samples and positions (abs before averaging), summed over removal sites"

    def site_scores(self, item: SiteSlice) -> torch.Tensor | None:
        return self.stats.agf(item.site.module, item.site.side)
