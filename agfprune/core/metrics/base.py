"""The Metric base class: a torch-pruning Importance that scores one dependency group.

A group is a list of (dependency, idxs) items: every layer slice that must be pruned together.
A metric scores each layer slice it understands (`local_scores`), the scores are reduced over the
group onto the root's channels (`group_reduction`) and normalised (`normalizer`), exactly as
torch-pruning's own importances do, so a pruner can call any metric unchanged. Loss-unit metrics
(AGF, Taylor) read the group's removal sites instead of its layer slices (`SiteMetric`) and sum
them; each metric declares its default reduction and normaliser (docs/metrics.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch_pruning.pruner.importance import Importance

from agfprune.core.calibration import CalibrationStats
from agfprune.core.errors import ModelError, UsageError
from agfprune.core.layer_types import NORM_TYPES, WEIGHT_TYPES
from agfprune.core.pruning.groups import (LayerSlice, SiteSlice, group_key, group_layers, layer_slices,
                                          removal_sites)

GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first")
NORMALIZERS = ("mean", "max", "sum", "standardization", "gaussian", "none")

__all__ = ["ActivationWeightedMetric", "GROUP_REDUCTIONS", "LayerSlice", "Metric", "NORMALIZERS", "NORM_TYPES",
           "SiteMetric", "SiteSlice", "WEIGHT_TYPES", "group_key", "group_layers", "in_channel_view",
           "layer_slices", "out_channel_view", "removal_sites", "take"]


def take(vector: torch.Tensor, idxs: list[int], what: str) -> torch.Tensor:
    """vector[idxs], with a clear error when the model no longer has the calibrated shape."""
    if idxs and max(idxs) >= vector.numel():
        raise ModelError(f"{what} has {vector.numel()} channels but the model needs channel {max(idxs)}; "
                         "the model changed since calibration (recalibrate)")
    return vector.reshape(-1)[torch.as_tensor(idxs, dtype=torch.long, device=vector.device)]


def out_channel_view(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Weights as (out channels, everything else)."""
    if getattr(module, "transposed", False):
        weight = weight.transpose(0, 1)
    return weight.flatten(1)


def in_channel_view(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Weights as (input channels, consumers x kernel); grouped convs see only their group's outputs."""
    if isinstance(module, nn.Linear):
        return weight.t()
    if getattr(module, "transposed", False):
        return weight.flatten(1)
    groups = int(getattr(module, "groups", 1))
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out_channels // groups, in_per_group, -1)
    return grouped.permute(0, 2, 1, 3).reshape(groups * in_per_group, -1)


class Metric(Importance):
    """Base of all metrics: subclasses set `name`/`requires_stats` and implement `local_scores`."""

    name: ClassVar[str] = ""
    requires_stats: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    # loss-unit metrics are comparable across groups as they are: summed, never rescaled per group
    loss_units: ClassVar[bool] = False
    default_reduction: ClassVar[str] = "mean"
    default_normalizer: ClassVar[str] = "mean"

    def __init__(self, stats: CalibrationStats | None = None, seed: int = 0,
                 group_reduction: str | None = None, normalizer: str | None = None) -> None:
        group_reduction = group_reduction or self.default_reduction
        normalizer = normalizer or self.default_normalizer
        if group_reduction not in GROUP_REDUCTIONS:
            raise UsageError(f"--group-reduction {group_reduction!r}: expected one of {', '.join(GROUP_REDUCTIONS)}")
        if normalizer not in NORMALIZERS:
            raise UsageError(f"--normalizer {normalizer!r}: expected one of {', '.join(NORMALIZERS)}")
        if self.requires_stats and stats is None:
            raise UsageError(f"metric {self.name} needs calibration statistics (run `agfprune calibrate` "
                             "and pass --calib)")
        self.stats = stats
        self.seed = seed
        self.group_reduction = group_reduction
        self.normalizer = normalizer

    @property
    def options(self) -> dict[str, Any]:
        return {"group_reduction": self.group_reduction, "normalizer": self.normalizer, "seed": self.seed}

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        """Scores of `item.idxs` for one layer slice, or None when this metric ignores the slice."""
        raise NotImplementedError

    def finish(self, reduced: torch.Tensor) -> torch.Tensor:
        """A last per-metric transform after group reduction (identity by default)."""
        return reduced

    def contributions(self, group: Any) -> list[tuple[torch.Tensor, list[int | None]]]:
        """(scores, root channels) of every part of the group this metric reads."""
        found = []
        for item in layer_slices(group):
            local = self.local_scores(item)
            if local is not None:
                found.append((local.detach().to("cpu", torch.float64).reshape(-1), item.root_idxs))
        return found

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        """One score per channel of the group's root (float32), or None when nothing is scorable."""
        contributions = self.contributions(group)
        if not contributions:
            return None
        root_channels = [int(i) for i in group[0].idxs]
        reduced = self.reduce(contributions, root_channels)
        return self.normalize(self.finish(reduced)).to(torch.float32)

    def reduce(self, contributions: list[tuple[torch.Tensor, list[int | None]]],
               root_channels: list[int]) -> torch.Tensor:
        """Combine per-layer scores onto root channels (torch-pruning's semantics: `mean` divides
        the sum by the number of contributing layer slices)."""
        position = {channel: i for i, channel in enumerate(root_channels)}
        size = len(root_channels)
        if self.group_reduction == "prod":
            reduced = torch.ones(size, dtype=torch.float64)
        elif self.group_reduction == "max":
            reduced = torch.full((size,), -float("inf"), dtype=torch.float64)
        else:
            reduced = torch.zeros(size, dtype=torch.float64)
        used = 0
        for local, root_idxs in contributions:
            if any(r is None or r not in position for r in root_idxs) or len(root_idxs) != local.numel():
                continue
            index = torch.tensor([position[r] for r in root_idxs], dtype=torch.long)
            if self.group_reduction in ("mean", "sum"):
                reduced.scatter_add_(0, index, local)
            elif self.group_reduction == "max":
                reduced.scatter_reduce_(0, index, local, reduce="amax")
            elif self.group_reduction == "prod":
                reduced.scatter_reduce_(0, index, local, reduce="prod")
            elif self.group_reduction == "first" and used == 0:
                reduced.scatter_(0, index, local)
            used += 1
        if self.group_reduction == "mean" and used:
            reduced /= used
        if self.group_reduction == "max":
            reduced[torch.isinf(reduced)] = 0.0
        return reduced

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """Scale a group's scores so that groups are comparable in global pruning."""
        kind = self.normalizer
        if kind == "none" or scores.numel() == 0:
            return scores
        if kind == "standardization":
            span = scores.max() - scores.min()
            return (scores - scores.min()) / (span + 1e-8)
        if kind == "gaussian":
            return (scores - scores.mean()) / (scores.std(unbiased=False) + 1e-8)
        denominator = {"mean": scores.mean(), "max": scores.max(), "sum": scores.sum()}[kind]
        return scores / denominator if float(denominator) != 0.0 else scores


class SiteMetric(Metric):
    """A utility in loss units read at the group's removal sites and summed over them: removing a
    channel removes it at every site at once, and first-order effects of several sources add."""

    requires_stats = True
    loss_units = True
    default_reduction = "sum"
    default_normalizer = "none"

    def site_scores(self, item: SiteSlice) -> torch.Tensor | None:
        """Per-channel utility at one site (all of the site's channels), or None if not calibrated."""
        raise NotImplementedError

    def contributions(self, group: Any) -> list[tuple[torch.Tensor, list[int | None]]]:
        found = []
        for item in removal_sites(group):
            values = self.site_scores(item)
            if values is None:
                raise ModelError(f"the calibration has no statistics at {item.site.key}, a removal site of "
                                 f"group {group_key(group)}; recalibrate this model with this agfprune")
            local = take(values, item.idxs, f"{self.name} statistics at {item.site.key}")
            found.append((local.detach().to("cpu", torch.float64).reshape(-1), item.root_idxs))
        return found


class ActivationWeightedMetric(Metric):
    """Input-channel scores of the form weight_term(W)_c × ||X_c||₂^norm_power (Wanda, RIA):
    a weight statistic of each consumer's input channel, scaled by that channel's activation norm."""

    requires_stats = True
    norm_power = 1.0

    def weight_term(self, item: LayerSlice) -> torch.Tensor:
        """One value per input channel of `item.module` (all channels, before slicing)."""
        raise NotImplementedError

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:
        if item.side != "in":
            return None
        norms = self.stats.input_norm(item.name)
        if norms is None:
            return None
        weights = take(self.weight_term(item).to(norms.dtype).cpu(), item.idxs, f"weights of {item.name}")
        norms = take(norms, item.idxs, f"input statistics of {item.name}")
        return weights * (norms if self.norm_power == 1.0 else norms.pow(self.norm_power))
