"""Pruning cases whose kept channels are stored in data/kept_channels.json (computed with the code
before torch-pruning was used through its public API only): a change of how agfprune drives the
pruner must not change which channels survive."""

from __future__ import annotations

import torch
import torch.nn as nn

from agfprune.core.metrics import get_metric
from agfprune.core.models import load_model
from agfprune.core.pruning import MetricScorer, PruneOptions, prune_model

CASES: dict[str, dict] = {
    "local-0.5-steps2-magnitude": dict(metric="magnitude-l2", options=dict(ratio=0.5, steps=2)),
    "global-params-0.4-costaware-random": dict(metric="random", options=dict(
        ratio=0.4, target="params", global_pruning=True, cost_aware=True)),
    "global-0.3-round4-random": dict(metric="random", options=dict(ratio=0.3, global_pruning=True, round_to=4)),
    "vit-heads-0.5": dict(metric="magnitude-l2", arch="vit_tiny_patch16_224", options=dict(ratio=0.25, head_ratio=0.5),
                          timm_kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                           num_classes=10)),
}


def kept_channels(case: str) -> dict[str, list[int]]:
    """{group: kept dense-model indices} of a ResNet-20 (or tiny ViT) with seeded weights."""
    spec = CASES[case]
    torch.manual_seed(0)
    loaded = load_model(spec.get("arch", "cifar_resnet20"), timm_kwargs=spec.get("timm_kwargs"))
    generator = torch.Generator().manual_seed(0)
    for module in loaded.model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = torch.rand(module.num_features, generator=generator) + 0.5
    loaded.fingerprint = "test"
    metric = spec["metric"]
    scorer = MetricScorer(metric, lambda model, step: get_metric(metric, **({"seed": 3} if metric == "random" else {})))
    record = prune_model(loaded, scorer, PruneOptions(**spec["options"])).record
    return {name: group["kept"] for name, group in sorted(record.groups.items())}
