"""scores.json on disk: the one writer and reader of the format, and stored scores as a metric.

`write_scores` writes what `ScoreReport.to_json` renders; `load_scores` checks the header and every
field (exit 4 naming the field) and returns the scores by group key, which `LoadedScores.importance()`
hands to the pruner in place of a metric (`prune --scores`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agfprune.core.atomic import write_text_atomic
from agfprune.core.errors import ModelError, UsageError, first_line
from agfprune.core.metrics.base import Metric
from agfprune.core.pruning.groups import group_key
from agfprune.core.scoring import FORMAT_NAME, FORMAT_VERSION, ScoreReport

__all__ = ["FileScoresImportance", "LoadedScores", "load_scores", "write_scores"]


def write_scores(path: str | Path, report: ScoreReport) -> None:
    """Write scores.json atomically."""
    write_text_atomic(path, report.to_json())


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
