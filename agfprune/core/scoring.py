"""Scores per dependency group, as the pruner sees them, and the scores.json report.

Groups come from torch-pruning's DependencyGraph with the pruner's conventions: Conv/Linear
roots, the classifier ignored by default, and attention groups re-rooted at the projection's input
features (one score per head feature; heads = the mean over each head's features). A scores.json
can then stand in for a metric when pruning (`load_scores(path).importance()`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.version import __version__
from agfprune.core.atomic import write_text_atomic
from agfprune.core.model_source import ModelSource
from agfprune.core.errors import ModelError, UsageError, first_line
from agfprune.core.metrics.base import Metric
from agfprune.core.pruning.groups import (ROOT_MODULE_TYPES, attention_heads, build_graph, classifier_modules,
                                          graph_of, group_key, group_layers, iter_groups, layer_slices)

FORMAT_NAME = "agfprune-scores"
FORMAT_VERSION = 1
SIGNIFICANT_DIGITS = 7

__all__ = ["GroupScores", "LoadedScores", "MetricScores", "ScoreReport", "ScoreRequest", "run_scoring", "attention_heads", "build_graph",
           "default_ignored_layers", "group_key", "iter_groups", "load_scores", "rank_agreement",
           "score_model", "write_scores"]


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


def write_scores(path: str | Path, report: ScoreReport) -> None:
    """Write scores.json atomically."""
    write_text_atomic(path, report.to_json())


# ---- reading scores back as an importance -----------------------------------------------------------

class FileScoresImportance(Metric):
    """A torch-pruning Importance that returns stored scores, looked up by group key."""

    name = "file"

    def __init__(self, scores: dict[str, torch.Tensor], source: str) -> None:
        super().__init__(normalizer="none")
        self.scores = scores
        self.source = source

    def __call__(self, group: Any) -> torch.Tensor | None:
        key = group_key(group)
        scores = self.scores.get(key)
        if scores is None:
            return None
        channels = [int(i) for i in group[0].idxs]
        if channels and max(channels) >= scores.numel():
            raise ModelError(f"{self.source}: group {key} has {scores.numel()} scores but the model's "
                             f"group has channel {max(channels)}; rescore the current model")
        return scores[torch.as_tensor(channels, dtype=torch.long)]


@dataclass
class LoadedScores:
    """Scores of one metric from a scores.json: group key -> scores, plus where they came from."""

    metric: str
    scores: dict[str, torch.Tensor]
    options: dict[str, Any]
    model: dict[str, Any]
    calibration: dict[str, Any] | None
    path: str

    @property
    def fingerprint(self) -> str | None:
        return self.model.get("fingerprint")

    def importance(self) -> FileScoresImportance:
        return FileScoresImportance(self.scores, self.path)


def load_scores(path: str | Path, metric: str | None = None) -> LoadedScores:
    """Read a scores.json; `metric` picks one when the file holds several (e.g. --metric all)."""
    from agfprune.core.formats import Fields, check_header, read_text

    path = Path(path)
    text = read_text(path, "scores file")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: not a readable scores file ({first_line(exc, 160)})") from None
    check_header(document, path, FORMAT_NAME, FORMAT_VERSION, version_key="version", what="scores file",
                 hint=" (run `agfprune score`)")
    fields = Fields(document, path)
    metrics = fields.mapping("metrics")
    if metric is None:
        if len(metrics) != 1:
            raise UsageError(f"{path} holds metrics {', '.join(metrics)}; name the one to use")
        metric = next(iter(metrics))
    if metric not in metrics:
        raise UsageError(f"{path} has no scores for metric {metric!r} (it has {', '.join(metrics) or 'none'})")
    entry = fields.section("metrics").section(metric)
    scores = {}
    for index, raw_group in enumerate(entry.sequence("groups")):
        group = Fields(raw_group, path, f"{entry.where}.groups[{index}]")
        values = group.sequence("scores")
        try:
            if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
                raise ValueError
            converted = [float("nan") if v is None else float(v) for v in values]
        except (ValueError, OverflowError):
            raise group.fail("scores", "a list of numbers (or null)", values) from None
        scores[group.string("key")] = torch.tensor(converted, dtype=torch.float32)
    model = fields.section("model", required=False)
    model.string("fingerprint", required=False)
    calibration = fields.mapping("calibration", required=False) or None
    return LoadedScores(metric=metric, scores=scores, options=entry.mapping("options", required=False),
                        model=model.document, calibration=calibration, path=str(path))


def layer_slice_names(group: Any) -> list[str]:
    """Module names of the group's Conv/Linear/norm slices (handy for logs)."""
    return [item.name for item in layer_slices(group)]


# ---- the `score` command's engine -------------------------------------------------------------------

_PROVENANCE_KEYS = ("model", "checkpoint", "pretrained", "fingerprint", "data", "split", "data_count", "batches",
                    "batch_size", "samples", "target", "seed", "input_size", "agfprune_version", "device", "amp",
                    "dtype", "format_version")


@dataclass
class ScoreRequest(ModelSource):
    """What `agfprune score` was asked for, before any loading (the model's fields: ModelSource)."""

    calib: Path | None = None
    metric: str = "agf"
    group_reduction: str | None = None  # None: each metric's default (sum for loss-unit metrics)
    normalizer: str | None = None       # None: each metric's default (none for loss-unit metrics)
    seed: int = 0

    def metric_list(self) -> list[str]:
        """'all', one name, or a comma-separated list -> registered names (UsageError lists valid ones)."""
        from agfprune.core.metrics import metric_class, metric_names

        text = (self.metric or "").strip()
        if text == "all":
            return metric_names()
        names = [part.strip() for part in text.split(",") if part.strip()]
        if not names:
            raise UsageError(f"--metrics is empty; valid metrics: {', '.join(metric_names())} or all")
        for name in names:
            metric_class(name)
        return list(dict.fromkeys(names))

    def validate(self) -> None:
        from agfprune.core.metrics.base import GROUP_REDUCTIONS, NORMALIZERS

        self.metric_list()
        if self.group_reduction is not None and self.group_reduction not in GROUP_REDUCTIONS:
            raise UsageError(f"--group-reduction {self.group_reduction!r}: expected one of {', '.join(GROUP_REDUCTIONS)}")
        if self.normalizer is not None and self.normalizer not in NORMALIZERS:
            raise UsageError(f"--normalizer {self.normalizer!r}: expected one of {', '.join(NORMALIZERS)}")
        self.validate_source()
        if self.calib is None and self.model is None and self.checkpoint is None:
            raise UsageError("give --calib FILE, or --model/--checkpoint for metrics without calibration")


def calibration_provenance(stats: Any) -> dict[str, Any]:
    """The calibration facts a score report carries (nothing run-dependent such as timings or paths)."""
    from agfprune.core.fingerprint import state_fingerprint

    tensors = {f"{kind}/{name}": value for kind in ("out_abs", "out_taylor", "in_abs", "in_taylor", "in_sq", "grad")
               for name, value in getattr(stats, kind).items()}
    provenance = {key: stats.metadata.get(key) for key in _PROVENANCE_KEYS if key in stats.metadata}
    provenance["stats_fingerprint"] = state_fingerprint(tensors)
    return provenance


def _load_scored_model(request: ScoreRequest, stats: Any) -> Any:
    from agfprune.core.device import seed_everything
    from agfprune.core.models import load_model

    meta = stats.metadata if stats is not None else {}
    # same seed as calibration, so that random-weight timm models are rebuilt bit for bit
    seed_everything(int(meta.get("seed", request.seed)))
    if request.model or request.checkpoint:
        return request.load_source("cpu")
    if not meta.get("model"):
        raise UsageError("the calibration file records no model; pass --model/--checkpoint")
    checkpoint = meta.get("checkpoint")
    if checkpoint and not Path(checkpoint).exists():
        raise ModelError(f"the calibration's checkpoint {checkpoint} no longer exists; pass --checkpoint")
    from agfprune.core.formats import check_timm_kwargs

    timm_kwargs = check_timm_kwargs(meta.get("timm_kwargs") or {}, meta.get("path", "the calibration file"))
    return load_model(meta["model"], checkpoint, pretrained=bool(meta.get("pretrained")),
                      timm_kwargs=timm_kwargs, device="cpu")


def run_scoring(request: ScoreRequest, out: str | Path | None = None) -> tuple[ScoreReport, dict[str, Any]]:
    """Load calibration and model, check they match, score every group, write scores.json (if `out`)."""
    from agfprune.core.calibration import check_matches, load_calibration
    from agfprune.core.data import calibrated_data_config
    from agfprune.core.metrics import get_metric, metric_class

    request.validate()
    names = request.metric_list()
    stats = load_calibration(request.calib) if request.calib is not None else None
    if stats is None:
        needing = [n for n in names if metric_class(n).requires_stats]
        if needing:
            raise UsageError(f"metric(s) {', '.join(needing)} need calibration statistics: run `agfprune calibrate` "
                             "and pass --calib")
    loaded = _load_scored_model(request, stats)
    if stats is not None:
        check_matches(stats, loaded)
    # the same data config prune would use with this calibration file and these overrides
    config = calibrated_data_config(loaded.data_config, stats.metadata if stats is not None else None,
                                    request.data_overrides)
    loaded.check_input_size(config)
    size = list(config["input_size"])
    metrics = [get_metric(n, stats, request.seed, request.group_reduction, request.normalizer) for n in names]
    info = {"arch": loaded.arch, "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
            "timm_kwargs": loaded.timm_kwargs, "input_size": size,
            **{key: [float(v) for v in config[key]] for key in ("mean", "std") if key in config}}
    report = score_model(loaded.model, metrics, torch.zeros(1, *size), model_info=info,
                         calibration=calibration_provenance(stats) if stats is not None else None)
    if out is not None:
        write_scores(out, report)
    return report, summarize(report, out)


def summarize(report: ScoreReport, out: str | Path | None = None) -> dict[str, Any]:
    """Per metric: groups, channels, score range, and agreement with AGF's ranking."""
    agreement = rank_agreement(report, "agf")
    metrics = {}
    for name, scores in report.metrics.items():
        values = torch.cat([g.scores.double() for g in scores.groups]) if scores.groups else torch.zeros(0)
        entry: dict[str, Any] = {
            "groups": len(scores.groups), "skipped": len(scores.skipped), "channels": int(values.numel()),
            "min": _round(float(values.min())) if values.numel() else None,
            "median": _round(float(values.median())) if values.numel() else None,
            "max": _round(float(values.max())) if values.numel() else None,
        }
        if name in agreement:
            entry["spearman_vs_agf"] = agreement[name]["spearman"]
            entry["bottom30_overlap_vs_agf"] = agreement[name]["bottom_overlap"]
        metrics[name] = entry
    return {"out": str(out) if out is not None else None, "model": report.model.get("arch"),
            "fingerprint": report.model.get("fingerprint"), "metrics": metrics}
