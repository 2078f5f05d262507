"""Where a pruning step's scores come from: a metric called on the current model, or a scores file.

A Scorer is what prune_model asks once per step for a ScoreTable (torch-pruning's Importance role).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn as nn
import torch_pruning as tp

from agfprune.core.errors import UsageError
from agfprune.core.pruning.groups import ScoreTable, score_groups, table_from_named_scores


class Scorer(Protocol):
    """Produces the scores of every group of `model` for pruning step `step` (1-based)."""

    name: str

    def __call__(self, model: nn.Module, pruner: tp.pruner.BasePruner, step: int) -> ScoreTable: ...


class MetricScorer:
    """Scores with a torch-pruning Importance, made afresh for each step from the current model
    (so that gradient/activation metrics can collect their statistics again on the pruned network)."""

    def __init__(self, name: str, make_importance: Callable[[nn.Module, int], tp.importance.Importance]) -> None:
        self.name = name
        self.make_importance = make_importance

    def __call__(self, model: nn.Module, pruner: tp.pruner.BasePruner, step: int) -> ScoreTable:
        return score_groups(pruner, self.make_importance(model, step))


class StoredScorer:
    """Scores read from a file, keyed by layer names; valid for the dense model only."""

    def __init__(self, name: str, named_scores: dict[str, torch.Tensor], source: str) -> None:
        self.name = name
        self.named_scores = named_scores
        self.source = source

    def __call__(self, model: nn.Module, pruner: tp.pruner.BasePruner, step: int) -> ScoreTable:
        if step > 1:
            raise UsageError(f"--steps > 1 needs a metric to re-score the pruned model; {self.source} "
                             "holds scores for the dense model only")
        return table_from_named_scores(pruner, self.named_scores, self.source)
