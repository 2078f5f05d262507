"""BatchNorm re-estimation: recompute the running statistics of a pruned network on calibration data.

Removing channels changes what every later normalisation layer sees, so the stored running
mean/variance no longer fit; without this step the accuracy of a pruned net says little.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from agfprune.core.errors import DataError, NumericalError
from agfprune.core.progress import SILENT, Progress


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable, device: torch.device, max_batches: int,
                         progress: Progress = SILENT) -> int:
    """Reset BN running stats and re-estimate them as a cumulative average over `max_batches`
    batches (momentum=None), with only the BN layers in train mode; returns batches used."""
    layers = batchnorm_layers(model)
    if not layers or max_batches <= 0:
        return 0
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    used = 0
    try:
        for images, _labels in progress.track(batches, total=max_batches, description="BN recalibration"):
            model(images.to(device))
            used += 1
            if used >= max_batches:
                break
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
            layer.eval()
        model.train(was_training)
    if used == 0:
        raise DataError("BN recalibration got no batches from the data")
    for layer in layers:
        if not torch.isfinite(layer.running_var).all() or not torch.isfinite(layer.running_mean).all():
            raise NumericalError("BN recalibration produced NaN/Inf running statistics")
    return used


# deprecated name ("recalibrate" also meant calibration statistics and router thresholds)
recalibrate_batchnorm = reestimate_batchnorm
