"""BatchNorm recalibration after pruning: the running statistics a pruned checkpoint carries are the
statistics of the pruned network on the recalibration images, computed here independently with
PyTorch's own BatchNorm (train mode, momentum 1: running stats = the batch's stats)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from agfprune.core.pruning import reestimate_batchnorm


def _batch_statistics(model: nn.Module, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm layer: (mean, unbiased variance) of its input on `images` as one batch."""
    probe = copy.deepcopy(model).eval()
    layers = {name: m for name, m in probe.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for layer in layers.values():
        layer.reset_running_stats()
        layer.momentum = 1.0
        layer.train()
    with torch.no_grad():
        probe(images)
    return {name: (layer.running_mean.clone(), layer.running_var.clone()) for name, layer in layers.items()}


def test_recalibration_averages_mean_and_variance_over_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():  # stale statistics, as after pruning
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(9.0)
    batches = [(torch.randn(8, 3, 8, 8) * (i + 1) + i, torch.zeros(8, dtype=torch.long)) for i in range(3)]
    assert reestimate_batchnorm(model, batches, torch.device("cpu"), max_batches=3) == 3
    per_batch = [_batch_statistics(model, images)["1"] for images, _ in batches]
    assert torch.allclose(model[1].running_mean, torch.stack([m for m, _ in per_batch]).mean(0), atol=1e-5)
    assert torch.allclose(model[1].running_var, torch.stack([v for _, v in per_batch]).mean(0), rtol=1e-5)


def test_a_pruned_checkpoint_carries_the_recalibrated_statistics(tmp_path: Path) -> None:
    from agfprune.core.data import build_transform, open_dataset
    from agfprune.core.models import load_model
    from agfprune.core.pruning.options import PruneOptions
    from agfprune.core.pruning.run import PruneRequest, run_prune

    out = tmp_path / "pruned.safetensors"
    # one batch holding all 32 images, so the expected statistics do not depend on the batch order
    request = PruneRequest(out=out, options=PruneOptions(ratio=0.5), model="cifar_resnet20", metric="magnitude-l2",
                           data=Path("synthetic:32"), bn_recalibrate=1, batch_size=32, device="cpu")
    run_prune(request)
    pruned = load_model(checkpoint=out).model
    dataset = open_dataset("synthetic:32", "train", build_transform(load_model(checkpoint=out).data_config,
                                                                    train=False))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    expected = _batch_statistics(pruned, images)
    layers = dict(pruned.named_modules())
    assert len(expected) == 19
    for name, (mean, variance) in expected.items():
        assert torch.allclose(layers[name].running_mean, mean, atol=1e-4), name
        assert torch.allclose(layers[name].running_var, variance, rtol=1e-4, atol=1e-5), name
