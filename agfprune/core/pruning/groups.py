"""Pruning groups as torch-pruning's pruner sees them, and a score table keyed by layer names.

Scores are computed once per step on the current model and stored by the names of the layers a
group removes output channels from; any copy of the model (ratio search trials) or a scores file
can then answer the pruner's `importance(group)` calls by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch_pruning as tp

from agfprune.core.errors import ModelError, NumericalError


@dataclass
class GroupInfo:
    """One prunable group: the name it is recorded under, its members and its channel units."""

    name: str
    members: list[str]
    channels: int        # length of the score vector (the root's prunable indices)
    channel_groups: int  # >1 for grouped convs / attention heads: scores are averaged per unit

    @property
    def units(self) -> int:
        return self.channels // self.channel_groups


def out_members(graph: tp.DependencyGraph, group) -> list[str]:
    """Names of the modules whose output channels the group removes (the group's identity)."""
    names: list[str] = []
    for dep, _ in group:
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            name = graph._module2name.get(dep.target.module)
            if name is not None and name not in names:
                names.append(name)
    return names


def pruner_groups(pruner: tp.pruner.BasePruner) -> Iterator[tuple[GroupInfo, object]]:
    """The groups the pruner's next step will score, in its order and with its re-rooting."""
    graph = pruner.DG
    for group in graph.get_all_groups(ignored_layers=pruner.ignored_layers,
                                      root_module_types=pruner.root_module_types):
        if not pruner._check_pruning_ratio(group):
            continue
        is_attention, _ = pruner._is_atten_group(group)
        if is_attention:
            group = pruner._downstream_node_as_root_if_attention(group)
            if group is None:
                continue
        members = out_members(graph, group)
        if not members:
            continue
        root = group[0].dep.target.module
        channels = (graph.get_out_channels(root) if graph.is_out_channel_pruning_fn(group[0].dep.handler)
                    else graph.get_in_channels(root))
        yield GroupInfo(members[0], members, int(channels), pruner._get_channel_groups(group)), group


class ScoreTable(tp.importance.Importance):
    """A torch-pruning Importance that answers from precomputed per-group scores, by layer name."""

    def __init__(self, scores: dict[str, torch.Tensor], groups: dict[str, GroupInfo]) -> None:
        self.scores = scores
        self.groups = groups
        self._by_member = {member: name for name, info in groups.items() for member in info.members}

    def lookup(self, members: list[str]) -> torch.Tensor | None:
        for member in members:
            name = self._by_member.get(member)
            if name is not None:
                return self.scores[name]
        return None

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:  # noqa: D102 - tp.Importance protocol
        return self.lookup(out_members(group._DG, group))

    def unit_scores(self, name: str) -> torch.Tensor:
        """Scores per prunable unit: channel groups (heads, conv groups) averaged, as tp does."""
        info, scores = self.groups[name], self.scores[name]
        return scores.view(info.channel_groups, -1).mean(0) if info.channel_groups > 1 else scores


@torch.no_grad()
def score_groups(pruner: tp.pruner.BasePruner, importance: tp.importance.Importance) -> ScoreTable:
    """Call `importance` once on every group the pruner will consider; check lengths and values."""
    scores: dict[str, torch.Tensor] = {}
    groups: dict[str, GroupInfo] = {}
    for info, group in pruner_groups(pruner):
        values = importance(group)
        if values is None:
            continue
        values = torch.as_tensor(values).detach().float().cpu().reshape(-1)
        if values.numel() != info.channels:
            raise ModelError(f"the metric gave {values.numel()} scores for group {info.name}, "
                             f"which has {info.channels} channels")
        if not torch.isfinite(values).all():
            raise NumericalError(f"the metric gave NaN/Inf scores for group {info.name}")
        scores[info.name] = values
        groups[info.name] = info
    if not scores:
        raise ModelError("the model has no prunable groups (everything is ignored or the classifier)")
    return ScoreTable(scores, groups)


def table_from_named_scores(pruner: tp.pruner.BasePruner, named: dict[str, torch.Tensor],
                            source: str) -> ScoreTable:
    """A ScoreTable from stored scores (a scores.json: keys are `group_key`s, `root:out|in`; plain
    member layer names are accepted too); refuses scores that do not fit this model's groups."""
    from agfprune.core.metrics.base import group_key

    scores: dict[str, torch.Tensor] = {}
    groups: dict[str, GroupInfo] = {}
    missing: list[str] = []
    for info, group in pruner_groups(pruner):
        candidates = [group_key(group)] + info.members + [f"{m}:out" for m in info.members]
        key = next((k for k in candidates if k in named), None)
        if key is None:
            missing.append(candidates[0])
            continue
        values = torch.as_tensor(named[key]).float().reshape(-1)
        if values.numel() != info.channels:
            raise ModelError(f"{source}: group {key} has {values.numel()} scores but this model's group "
                             f"has {info.channels} channels; the scores are for another model")
        if not torch.isfinite(values).all():
            raise ModelError(f"{source}: group {key} has missing or non-finite scores")
        scores[info.name] = values
        groups[info.name] = info
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelError(f"{source}: no scores for {len(missing)} of this model's groups ({shown}); "
                         "the scores are for another model")
    if not scores:
        raise ModelError("the model has no prunable groups (everything is ignored or the classifier)")
    return ScoreTable(scores, groups)
