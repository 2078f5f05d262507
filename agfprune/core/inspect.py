"""A model summary: size, cost, prunable layers, data config and provenance."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from agfprune.core.evaluate import count_cost
from agfprune.core.models import LoadedModel

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def prunable_layers(model: nn.Module) -> list[dict[str, Any]]:
    """Layers whose output channels/features (or norm channels) a structural pruner can remove."""
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if isinstance(module, nn.Conv2d):
            out_dim, in_dim = module.out_channels, module.in_channels
        elif isinstance(module, nn.Linear):
            out_dim, in_dim = module.out_features, module.in_features
        elif isinstance(module, nn.LayerNorm):
            out_dim = in_dim = int(module.normalized_shape[-1])
        elif isinstance(module, nn.GroupNorm):
            out_dim = in_dim = module.num_channels
        else:
            out_dim = in_dim = module.num_features
        layers.append({"name": name, "type": type(module).__name__, "out": out_dim, "in": in_dim})
    return layers


def describe_model(loaded: LoadedModel) -> dict[str, Any]:
    """JSON-ready summary of a loaded model."""
    cost = count_cost(loaded.model, loaded.input_size)
    metadata = {k: v for k, v in loaded.metadata.items() if k not in ("structure",)}
    widths: dict[str, Any] = {}
    if loaded.metadata.get("structure"):
        from agfprune.core.widths_report import base_of, summarize_widths, width_rows

        rows = width_rows(base_of(loaded), loaded.model)
        widths = {"width_summary": summarize_widths(rows), "widths": rows}
    return {
        "model": loaded.arch,
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "fingerprint": loaded.fingerprint,
        "pruned": bool(loaded.metadata.get("structure")),
        "num_classes": loaded.num_classes,
        "params": cost.params,
        "macs": cost.macs,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in loaded.data_config.items()},
        "timm_kwargs": loaded.timm_kwargs,
        "prunable_layers": prunable_layers(loaded.model),
        "metadata": metadata,
        **widths,
    }
