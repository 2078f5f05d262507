"""Magnitude: the Lp norm of each channel's weights over the whole coupled group."""

from __future__ import annotations

import torch

from agfprune.core.layer_types import NORM_TYPES
from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import LayerSlice, Metric, in_channel_view, out_channel_view, take


class _MagnitudeMetric(Metric):
    """(reduce over the group's layers of sum |w|^p)^(1/p): producer rows, consumer columns, norm scales."""

    p = 2

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        module = item.module
        weight = getattr(module, "weight", None)
        if weight is None:
            return None
        weight = weight.detach()
        if isinstance(module, NORM_TYPES):
            powers = weight.abs().pow(self.p)
        elif item.side == "out":
            powers = out_channel_view(weight, module).abs().pow(self.p).sum(1)
        else:
            powers = in_channel_view(weight, module).abs().pow(self.p).sum(1)
        return take(powers, item.idxs, f"weights of {item.name}")

    def finish(self, reduced: torch.Tensor) -> torch.Tensor:
        return reduced.clamp_min(0).pow(1.0 / self.p)


@register_metric("magnitude-l1")
class MagnitudeL1Metric(_MagnitudeMetric):
    summary = "L1 norm of each channel's weights over the coupled group"
    p = 1


@register_metric("magnitude-l2")
class MagnitudeL2Metric(_MagnitudeMetric):
    summary = "L2 norm of each channel's weights over the coupled group"
    p = 2
