"""SNIP (Lee et al. 2019), per structure: sum of |w * dL/dw| over the structure's parameters."""

from __future__ import annotations

import torch

from agfprune.core.layer_types import NORM_TYPES
from agfprune.core.errors import ModelError
from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import LayerSlice, Metric, in_channel_view, out_channel_view, take


@register_metric("snip")
class SnipMetric(Metric):
    """Connection sensitivity with the gradient averaged over the calibration batches.

    Frozen parameters (no gradient, e.g. the option-A shortcut) contribute nothing; BatchNorm
    scale and shift count as the channel's parameters.
    """

    requires_stats = True
    # |w * dL/dw| is a first-order loss change: loss units, summed over the group's parameters
    loss_units = True
    default_reduction = "sum"
    default_normalizer = "none"
    summary = "sum of |w * dL/dw| over the structure's parameters (weights, bias, norm scale/shift)"

    def _saliency(self, item: LayerSlice, attr: str) -> torch.Tensor | None:
        parameter = getattr(item.module, attr, None)
        gradient = self.stats.mean_grad(f"{item.name}.{attr}")
        if parameter is None or gradient is None:
            return None
        if gradient.shape != parameter.shape:
            raise ModelError(f"calibration gradients of {item.name}.{attr} have shape {tuple(gradient.shape)} "
                             f"but the model's parameter has {tuple(parameter.shape)}; recalibrate")
        return (parameter.detach().cpu().to(gradient.dtype) * gradient).abs()

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        weight = self._saliency(item, "weight")
        bias = self._saliency(item, "bias")
        if weight is None and bias is None:
            return None
        if isinstance(item.module, NORM_TYPES):
            total = sum(t for t in (weight, bias) if t is not None)
        elif item.side == "out":
            total = out_channel_view(weight, item.module).sum(1) if weight is not None else 0
            if bias is not None:
                total = total + bias
        else:
            if weight is None:
                return None
            total = in_channel_view(weight, item.module).sum(1)
        return take(total, item.idxs, f"gradients of {item.name}")
