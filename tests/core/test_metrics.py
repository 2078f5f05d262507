"""Metrics: registry, hand-computed formulas on a tiny MLP/CNN, determinism, and use inside a tp pruner."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner.importance import Importance

from agfprune.core.calibration import collect_statistics
from agfprune.core.errors import UsageError
from agfprune.core.metrics import get_metric, metric_names
from agfprune.core.scoring import build_graph

ALL = ["agf", "taylor", "magnitude-l1", "magnitude-l2", "bn-scale", "wanda", "ria", "snip", "random"]


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def mlp_setup():
    torch.manual_seed(0)
    model = Mlp().double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    stats = collect_statistics(model, [(x, y)], "cpu", batches=1)
    graph = build_graph(model, x[:1])
    group = graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0, 1, 2])
    hidden = torch.relu(model.fc1(x)).detach()
    return model, stats, group, hidden


def _score(name, stats, group, **kw):
    return get_metric(name, stats, normalizer="none", **kw)(group).double()


def test_registry_lists_every_metric_and_flags_stats():
    assert metric_names() == ALL
    needs = {n for n in ALL if get_metric(n, stats=object()).requires_stats}  # type: ignore[arg-type]
    assert needs == {"agf", "taylor", "wanda", "ria", "snip"}
    assert all(isinstance(get_metric(n, stats=object()), Importance) for n in ALL)  # type: ignore[arg-type]


def test_unknown_metric_lists_valid_names():
    with pytest.raises(UsageError) as info:
        get_metric("agff")
    assert "agff" in info.value.message and "magnitude-l2" in info.value.message and "random" in info.value.message


def test_stats_metrics_refuse_to_run_without_stats():
    with pytest.raises(UsageError, match="--calib"):
        get_metric("agf")


def test_bad_reduction_and_normalizer():
    with pytest.raises(UsageError, match="group-reduction"):
        get_metric("magnitude-l1", group_reduction="median")
    with pytest.raises(UsageError, match="normalizer"):
        get_metric("magnitude-l1", normalizer="zscore")


def test_magnitude_formulas(mlp_setup):
    model, stats, group, _ = mlp_setup
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    l1 = (w1.abs().sum(1) + w2.abs().sum(0)) / 2
    l2 = ((w1.pow(2).sum(1) + w2.pow(2).sum(0)) / 2).sqrt()
    assert torch.allclose(_score("magnitude-l1", stats, group), l1, atol=1e-6)
    assert torch.allclose(_score("magnitude-l2", stats, group), l2, atol=1e-6)
    summed = _score("magnitude-l1", stats, group, group_reduction="sum")
    assert torch.allclose(summed, w1.abs().sum(1) + w2.abs().sum(0), atol=1e-6)


def test_agf_and_taylor_read_the_consumer_input(mlp_setup):
    _, stats, group, _ = mlp_setup
    assert torch.allclose(_score("agf", stats, group), stats.agf("fc2", "in"), atol=1e-7)
    assert torch.allclose(_score("taylor", stats, group), stats.taylor("fc2", "in"), atol=1e-7)
    # (N, C) outputs have no positions, so AGF and Taylor coincide here; test_calibration covers maps


def test_wanda_and_ria_formulas(mlp_setup):
    model, stats, group, hidden = mlp_setup
    w2 = model.fc2.weight.detach().abs()
    norms = hidden.pow(2).sum(0).sqrt()
    assert torch.allclose(_score("wanda", stats, group), norms * w2.sum(0), atol=1e-6)
    ria = (w2 / w2.sum(0, keepdim=True) + w2 / w2.sum(1, keepdim=True)).sum(0) * norms.sqrt()
    assert torch.allclose(_score("ria", stats, group), ria, atol=1e-6)


def test_snip_formula(mlp_setup):
    model, stats, group, _ = mlp_setup
    g1, gb1, g2 = stats.mean_grad("fc1.weight"), stats.mean_grad("fc1.bias"), stats.mean_grad("fc2.weight")
    w1, b1, w2 = model.fc1.weight.detach(), model.fc1.bias.detach(), model.fc2.weight.detach()
    # loss units: the saliencies of all the parameters a channel removes add up (no mean over layers)
    expected = (w1 * g1).abs().sum(1) + (b1 * gb1).abs() + (w2 * g2).abs().sum(0)
    assert torch.allclose(_score("snip", stats, group), expected, atol=1e-7)


def test_normalizers(mlp_setup):
    _, stats, group, _ = mlp_setup
    raw = _score("magnitude-l1", stats, group)
    assert torch.allclose(get_metric("magnitude-l1")(group).double(), raw / raw.mean(), atol=1e-6)
    assert float(get_metric("magnitude-l1", normalizer="max")(group).max()) == pytest.approx(1.0)
    standardized = get_metric("magnitude-l1", normalizer="standardization")(group)
    assert float(standardized.min()) == pytest.approx(0.0, abs=1e-6)


def test_random_is_seeded_per_group(mlp_setup):
    _, _, group, _ = mlp_setup
    first = get_metric("random", seed=1)(group)
    assert torch.equal(first, get_metric("random", seed=1)(group))
    assert not torch.equal(first, get_metric("random", seed=2)(group))
    assert first.shape == (3,)


def test_bn_scale_and_snip_use_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.1]))
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 2, (6,))
    stats = collect_statistics(model, [(x, y)], "cpu", batches=1)
    graph = build_graph(model, x[:1])
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1, 2, 3])
    bn = get_metric("bn-scale", normalizer="none")(group)
    assert torch.allclose(bn, torch.tensor([0.5, 2.0, 1.0, 0.1]))
    # SNIP sees the BatchNorm's own parameters: zeroing their gradients changes the score
    with_bn = get_metric("snip", stats, normalizer="none")(group)
    stats.grad["1.weight"] = torch.zeros(4)
    stats.grad["1.bias"] = torch.zeros(4)
    assert not torch.allclose(with_bn, get_metric("snip", stats, normalizer="none")(group))


def test_a_metric_drives_a_torch_pruning_pruner():
    from agfprune.core.models import create_model

    torch.manual_seed(0)
    model = create_model("cifar_resnet20")  # frozen option-A shortcuts inside residual groups
    stats = collect_statistics(model, [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))], "cpu", batches=1)
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 32, 32), importance=get_metric("snip", stats),
                                  pruning_ratio=0.25, ignored_layers=[model.linear])
    pruner.step()
    assert model.layer1[0].conv1.out_channels == 12
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_default_reduction_and_normaliser_per_metric():
    """Loss-unit metrics are summed and never rescaled per group; the others keep torch-pruning's
    mean reduction and the normaliser measured best for global ranking (docs/pruning.md)."""
    defaults = {name: (get_metric(name, stats=object()).group_reduction,  # type: ignore[arg-type]
                       get_metric(name, stats=object()).normalizer) for name in ALL}  # type: ignore[arg-type]
    assert defaults == {"agf": ("sum", "none"), "taylor": ("sum", "none"), "snip": ("sum", "none"),
                        "magnitude-l1": ("mean", "mean"), "magnitude-l2": ("mean", "mean"),
                        "bn-scale": ("mean", "mean"), "wanda": ("mean", "none"), "ria": ("mean", "mean"),
                        "random": ("mean", "none")}
