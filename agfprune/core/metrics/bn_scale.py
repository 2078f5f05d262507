"""BN scale (network slimming, Liu et al. 2017): |gamma| of the normalisation layers in the group."""

from __future__ import annotations

import torch

from agfprune.core.layer_types import NORM_TYPES
from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import LayerSlice, Metric, take


@register_metric("bn-scale")
class BnScaleMetric(Metric):
    """Groups without an affine normalisation layer get no score (None), as in torch-pruning."""

    summary = "|gamma| of the group's normalisation layers (network slimming)"

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        weight = getattr(item.module, "weight", None)
        if not isinstance(item.module, NORM_TYPES) or weight is None:
            return None
        return take(weight.detach().abs(), item.idxs, f"scales of {item.name}")
