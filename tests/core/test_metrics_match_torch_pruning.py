"""Magnitude and BN-scale scores agree with Torch-Pruning's own importances on every group of real
networks, for each group reduction and normaliser passed explicitly (so a change of our defaults
does not hide a change of the numbers).

Torch-Pruning's `GroupMagnitudeImportance(p)` reduces sum |w|^p over the group without taking the
p-th root; ours reports the norm, so for p = 2 the comparison squares ours (normaliser "none"; with a
normaliser the root does not commute with the division, except for L1 where there is no root)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from agfprune.core.metrics import get_metric
from agfprune.core.models import create_model

# torch-pruning's spelling of our "standardization" normaliser, and None for our "none"
TP_NORMALIZER = {"none": None, "mean": "mean", "max": "max", "sum": "sum", "standardization": "standarization"}


def _groups(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> list:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
    assert groups
    return groups


@pytest.fixture(scope="module")
def resnet_groups() -> list:
    torch.manual_seed(0)
    model = create_model("cifar_resnet20")
    with torch.no_grad():  # BN scales away from their initial 1.0, so that BN terms matter
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(-1.5, 1.5)
    return _groups(model, torch.randn(1, 3, 32, 32), [model.linear])


@pytest.fixture(scope="module")
def vit_groups() -> list:
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                         num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.2, 2.0)
    ignored = [model.head] + [block.attn for block in model.blocks]  # MLP and embedding width only
    return _groups(model, torch.randn(1, 3, 16, 16), ignored)


def _compare(ours, theirs, groups: list, power: float = 1.0) -> None:
    compared = 0
    for group in groups:
        expected = theirs(group)
        actual = ours(group)
        if expected is None:
            assert actual is None
            continue
        assert actual is not None
        # torch-pruning works in float32, ours in float64: allow float32 rounding of the largest score
        scale = float(expected.abs().max())
        torch.testing.assert_close(actual.double().pow(power), expected.double(), rtol=2e-5, atol=2e-6 * scale)
        compared += 1
    assert compared >= 3


@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "first"])
@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_equals_group_magnitude_importance(resnet_groups, vit_groups, reduction, p) -> None:
    ours = get_metric(f"magnitude-l{p}", group_reduction=reduction, normalizer="none")
    theirs = tp.importance.GroupMagnitudeImportance(p=p, group_reduction=reduction, normalizer=None)
    for groups in (resnet_groups, vit_groups):
        _compare(ours, theirs, groups, power=p)


@pytest.mark.parametrize("normalizer", ["mean", "max", "sum", "standardization"])
def test_magnitude_l1_normalisers_equal_torch_pruning(resnet_groups, normalizer) -> None:
    ours = get_metric("magnitude-l1", group_reduction="mean", normalizer=normalizer)
    theirs = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean",
                                                    normalizer=TP_NORMALIZER[normalizer])
    _compare(ours, theirs, resnet_groups)


@pytest.mark.parametrize("normalizer", ["none", "mean", "max"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "max"])
def test_bn_scale_equals_bn_scale_importance(resnet_groups, reduction, normalizer) -> None:
    ours = get_metric("bn-scale", group_reduction=reduction, normalizer=normalizer)
    theirs = tp.importance.BNScaleImportance(group_reduction=reduction, normalizer=TP_NORMALIZER[normalizer])
    _compare(ours, theirs, resnet_groups)
