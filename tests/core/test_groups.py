"""The group model on the layers ResNets lack: grouped and depthwise convs, and one-channel layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from agfprune.core.pruning import PruneOptions
from agfprune.core.pruning.pruner import build_pruner
from agfprune.core.pruning.groups import GroupInfo, ScoreTable, channel_cost, output_positions, pruner_groups


class GroupedNet(nn.Module):
    """stem → grouped conv (2 groups) → depthwise conv → a one-channel bottleneck → head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.grouped, self.bn2 = nn.Conv2d(8, 12, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(12)
        self.depthwise, self.bn3 = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12)
        self.one, self.expand = nn.Conv2d(12, 1, 1), nn.Conv2d(1, 6, 1)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.grouped(x)))
        x = torch.relu(self.bn3(self.depthwise(x)))
        x = self.expand(torch.relu(self.one(x)))
        return self.head(x.mean((2, 3)))


def _listed_groups():
    torch.manual_seed(0)
    model, example = GroupedNet().eval(), torch.randn(1, 3, 8, 8)
    pruner, _ = build_pruner(model, example, PruneOptions(ratio=0.5), 0.5)
    return model, example, {info.name: (info, group) for info, group in pruner_groups(pruner)}


def test_a_layer_down_to_one_channel_is_not_offered_to_the_pruner() -> None:
    model, _example, groups = _listed_groups()
    assert model.one.out_channels == 1
    assert set(groups) == {"stem", "depthwise", "expand"}  # `one` (1 output channel) is left alone


@pytest.mark.parametrize("root, idxs", [("stem", [0, 4]), ("grouped", [0, 6])])
def test_unit_cost_of_grouped_and_depthwise_convs_is_what_pruning_one_unit_frees(root: str, idxs: list[int]) -> None:
    # stem's channels are read by a 2-group conv (a column of one group's filters each); grouped's
    # output channels run through a depthwise conv, sliced on both sides but one layer. A unit is one
    # channel of every conv group, so it removes one index per group.
    model, example, groups = _listed_groups()
    info, group = next(entry for entry in groups.values() if root in entry[0].members)
    assert info.channel_groups == 2 and info.units * 2 == info.channels
    trial = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(trial, example_inputs=example)
    before = sum(p.numel() for p in trial.parameters())
    graph.get_pruning_group(trial.get_submodule(root), tp.prune_conv_out_channels, idxs).prune()
    freed = before - sum(p.numel() for p in trial.parameters())
    unit_cost = channel_cost(group, "params", output_positions(model, example)) * info.channel_groups
    assert unit_cost == pytest.approx(freed)


def test_a_grouped_units_score_is_the_mean_over_its_conv_groups() -> None:
    # unit u of a 2-group conv is channel u of group 0 and channel u of group 1 (as tp removes them)
    scores = torch.tensor([1.0, 2.0, 9.0, 0.0, 3.0, 6.0, 1.0, 4.0])
    table = ScoreTable({"g": scores}, {"g": GroupInfo("g", ["g"], channels=8, channel_groups=2)})
    assert table.unit_scores("g").tolist() == [(1 + 3) / 2, (2 + 6) / 2, (9 + 1) / 2, (0 + 4) / 2]
    plain = ScoreTable({"p": scores}, {"p": GroupInfo("p", ["p"], channels=8, channel_groups=1)})
    assert plain.unit_scores("p").tolist() == scores.tolist()
