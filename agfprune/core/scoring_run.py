"""The `score` command's engine: its request, validated before loading, and `run_scoring`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agfprune.core.errors import ModelError, UsageError
from agfprune.core.model_source import ModelSource
from agfprune.core.scores_file import write_scores
from agfprune.core.scoring import ScoreReport, _round, rank_agreement, score_model

__all__ = ["ScoreRequest", "calibration_provenance", "run_scoring", "summarize"]


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
