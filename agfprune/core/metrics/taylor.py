"""Taylor (Molchanov et al. 2017): per sample |sum over positions of a * dL/da|, averaged, read at
each group's removal sites and summed over them, like AGF."""

from __future__ import annotations

import torch

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import SiteMetric, SiteSlice


@register_metric("taylor")
class TaylorMetric(SiteMetric):
    """First-order Taylor estimate of the loss change when a feature map is removed."""

    summary = "mean over samples of |sum over positions of a * dL/da| (Molchanov 2017), summed over removal sites"

    def site_scores(self, item: SiteSlice) -> torch.Tensor | None:
        return self.stats.taylor(item.site.module, item.site.side)
