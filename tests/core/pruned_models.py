"""Small pruned checkpoints for finetune/export tests, made with torch-pruning directly (magnitude
importance), so these tests do not depend on agfprune's own pruning code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def prune_magnitude(model: nn.Module, example: torch.Tensor, ratio: float,
                    ignored: list[nn.Module], **pruner_kwargs: Any) -> nn.Module:
    """Remove `ratio` of the channels of every prunable group by group L2 magnitude."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored, **pruner_kwargs)
    pruner.step()
    return model


def pruned_checkpoint(path: Path, arch: str = "cifar_resnet20", ratio: float = 0.5, input_px: int = 32,
                      seed: int = 0, **timm_kwargs: Any) -> Path:
    """Build `arch`, prune it by magnitude, save it with its structure diff; return `path`."""
    from agfprune.core.checkpoint import structure_diff, write_checkpoint
    from agfprune.core.models import create_model
    from agfprune.core.models.factory import resolve_model_data_config

    torch.manual_seed(seed)
    base = create_model(arch, **timm_kwargs).eval()
    model = create_model(arch, **timm_kwargs).eval()
    model.load_state_dict(base.state_dict())
    example = torch.randn(1, 3, input_px, input_px)
    kwargs: dict[str, Any] = {}
    ignored: list[nn.Module] = [model.get_classifier()]
    if hasattr(model, "blocks"):  # ViT: prune only the MLP hidden width
        for block in model.blocks:
            ignored += [block.attn, block.mlp.fc2]
        ignored.append(model.patch_embed)
    prune_magnitude(model, example, ratio, ignored, **kwargs)
    data_config = resolve_model_data_config(model)
    data_config["input_size"] = (3, input_px, input_px)
    write_checkpoint(path, model, arch=arch, timm_kwargs=timm_kwargs, data_config=data_config,
                     structure=structure_diff(base, model), extra={"pruning": {"ratio": ratio, "method": "magnitude"}})
    return path
