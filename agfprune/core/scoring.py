"""Scores per dependency group, as the pruner sees them, and the scores.json report.

Groups come from torch-pruning's DependencyGraph with the pruner's conventions: Conv/Linear
roots, the classifier ignored by default, and attention groups re-rooted at the projection's input
features (one score per head feature; heads = the mean over each head's features). A scores.json
can then stand in for a metric when pruning (`load_scores(path).importance()`).

Here: scoring every group and comparing rankings. The scores.json reader/writer is in
scores_file.py; the `score` command's request and run are in scoring_run.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.version import __version__
from agfprune.core.errors import ModelError, UsageError
from agfprune.core.metrics.base import Metric
from agfprune.core.pruning.groups import (attention_heads, build_graph, classifier_modules, graph_of, group_key,
                                          group_layers, iter_groups)

FORMAT_NAME = "agfprune-scores"
FORMAT_VERSION = 1
SIGNIFICANT_DIGITS = 7

__all__ = ["GroupScores", "MetricScores", "ScoreReport", "attention_heads", "build_graph",
           "default_ignored_layers", "group_key", "iter_groups", "rank_agreement", "score_model"]


def default_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The classifier: pruning its outputs would drop classes."""
    return classifier_modules(model)


def _group_heads(group: Any, num_heads: dict[nn.Module, int]) -> int | None:
    """Heads of an attention group: qkv must be an *output* slice (a residual stream only reads qkv)."""
    graph = graph_of(group)
    heads = [num_heads[dep.target.module] for dep, _ in group
             if dep.target.module in num_heads and graph.is_out_channel_pruning_fn(dep.handler)]
    return max(heads) if heads else None


# ---- the report -------------------------------------------------------------------------------------

def _round(value: float) -> float | None:
    if not math.isfinite(value):
        return None
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


@dataclass
class GroupScores:
    """One group: its id, its layer slices, channel count, heads (attention) and scores."""

    key: str
    layers: list[str]
    channels: int
    scores: torch.Tensor
    heads: int | None = None

    def head_scores(self) -> torch.Tensor | None:
        if not self.heads or self.channels % self.heads:
            return None
        return self.scores.reshape(self.heads, -1).mean(dim=1)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"key": self.key, "layers": self.layers, "channels": self.channels,
                                    "heads": self.heads, "scores": [_round(float(v)) for v in self.scores]}
        head_scores = self.head_scores()
        if head_scores is not None:
            document["head_scores"] = [_round(float(v)) for v in head_scores]
        return document


@dataclass
class MetricScores:
    """All group scores of one metric, plus the groups it could not score."""

    metric: str
    options: dict[str, Any]
    requires_stats: bool
    groups: list[GroupScores] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def layer_summaries(self) -> list[dict[str, Any]]:
        """One row per output-side layer: the group that governs its channels and score range."""
        rows = []
        for group in self.groups:
            values = group.scores.double()
            for layer in group.layers:
                name, _, side = layer.rpartition(":")
                if side != "out":
                    continue
                rows.append({"layer": name, "group": group.key, "channels": group.channels,
                             "min": _round(float(values.min())), "mean": _round(float(values.mean())),
                             "max": _round(float(values.max()))})
        return sorted(rows, key=lambda row: row["layer"])

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "options": self.options, "requires_stats": self.requires_stats,
                "groups": [g.to_dict() for g in self.groups], "skipped_groups": self.skipped,
                "layers": self.layer_summaries()}


@dataclass
class ScoreReport:
    """Scores of one model under one or more metrics; serialises to docs/scores-schema.md."""

    model: dict[str, Any]
    metrics: dict[str, MetricScores]
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "agfprune_version": __version__,
                "model": self.model, "calibration": self.calibration,
                "metrics": {name: scores.to_dict() for name, scores in self.metrics.items()}}

    def to_json(self) -> str:
        """Deterministic text: sorted keys, floats rounded to 7 significant digits."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n"


def score_model(model: nn.Module, metric: Metric | Sequence[Metric], example_inputs: torch.Tensor,
                ignored_layers: Sequence[nn.Module] | None = None, *,
                num_heads: dict[nn.Module, int] | None = None, graph: Any = None,
                model_info: dict[str, Any] | None = None,
                calibration: dict[str, Any] | None = None) -> ScoreReport:
    """Score every prunable group of `model` with one or several metrics (one graph trace)."""
    metrics = [metric] if isinstance(metric, Metric) else list(metric)
    if not metrics:
        raise UsageError("no metric to score with")
    graph = graph if graph is not None else build_graph(model, example_inputs)
    ignored = default_ignored_layers(model) if ignored_layers is None else list(ignored_layers)
    num_heads = attention_heads(model) if num_heads is None else num_heads
    results = {m.name: MetricScores(m.name, m.options, m.requires_stats) for m in metrics}
    for group in iter_groups(graph, ignored, num_heads):
        key = group_key(group)
        layers = group_layers(group)
        heads = _group_heads(group, num_heads)
        for item in metrics:
            scores = item(group)
            if scores is None:
                results[item.name].skipped.append(key)
                continue
            if scores.numel() != len(group[0].idxs):
                raise ModelError(f"metric {item.name} returned {scores.numel()} scores for group {key} "
                                 f"of {len(group[0].idxs)} channels")
            results[item.name].groups.append(GroupScores(key, layers, int(scores.numel()), scores.cpu(), heads))
    from agfprune.core.fingerprint import model_fingerprint

    info = {"fingerprint": model_fingerprint(model), **(model_info or {})}
    return ScoreReport(model=info, metrics=results, calibration=calibration)


def rank_agreement(report: ScoreReport, reference: str = "agf", top_fraction: float = 0.3) -> dict[str, dict[str, float]]:
    """Per metric vs `reference`: mean over shared groups of Spearman rho of the channel rankings,
    and of the overlap of the lowest-scored `top_fraction` channels (the ones a pruner removes)."""
    if reference not in report.metrics:
        return {}
    base = {g.key: g.scores for g in report.metrics[reference].groups}
    agreement = {}
    for name, scores in report.metrics.items():
        rhos, overlaps = [], []
        for group in scores.groups:
            other = base.get(group.key)
            if other is None or other.numel() < 3:
                continue
            rhos.append(_spearman(group.scores, other))
            count = max(1, int(round(top_fraction * other.numel())))
            low_a = set(group.scores.argsort()[:count].tolist())
            low_b = set(other.argsort()[:count].tolist())
            overlaps.append(len(low_a & low_b) / count)
        if rhos:
            agreement[name] = {"spearman": _round(sum(rhos) / len(rhos)),
                               "bottom_overlap": _round(sum(overlaps) / len(overlaps)), "groups": len(rhos)}
    return agreement


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    rank_a = a.double().argsort().argsort().double()
    rank_b = b.double().argsort().argsort().double()
    rank_a, rank_b = rank_a - rank_a.mean(), rank_b - rank_b.mean()
    denominator = float(rank_a.norm() * rank_b.norm())
    return float((rank_a * rank_b).sum()) / denominator if denominator else 0.0
