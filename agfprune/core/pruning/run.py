"""The `prune` command's engine: load, score (metric + calibration, calibration file, or scores
file), prune, re-estimate BatchNorm statistics, save a verified checkpoint, optionally evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agfprune.core.errors import UsageError
from agfprune.core.model_source import ModelSource
from agfprune.core.progress import SILENT, Progress
from agfprune.core.pruning.engine import PruneResult, prune_model
from agfprune.core.pruning.options import PruneOptions
from agfprune.core.pruning.scorers import MetricScorer, StoredScorer

DEFAULT_METRIC_WITH_DATA = "agf"  # with --data or --calib
DEFAULT_METRIC_WITHOUT_DATA = "magnitude-l2"


@dataclass
class PruneRequest(ModelSource):
    """Everything `agfprune prune` was asked for, before any loading (the model's fields: ModelSource)."""

    out: Path
    options: PruneOptions
    metric: str | None = None
    data: Path | None = None
    calib: Path | None = None
    scores: Path | None = None
    calib_batches: int = 16
    calib_target: str = "labels"
    bn_recalibrate: int | None = None  # batches; None = as many as calibration uses, when data is given
    batch_size: int = 64
    workers: int = 0
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    eval_data: Path | None = None
    eval_limit: int | None = None
    skip_bad_images: bool = False
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        self.validate_source()  # first, as --img-size/--mean/--std were read before the other options
        self.options.validate()
        if self.scores is not None and self.calib is not None:
            raise UsageError("give either --scores or --calib, not both")
        if self.calib_batches <= 0:
            raise UsageError(f"--calib-batches {self.calib_batches}: must be positive")
        if self.bn_recalibrate is not None and self.bn_recalibrate < 0:
            raise UsageError(f"--bn-batches {self.bn_recalibrate}: must be ≥ 0 (0 turns it off)")
        if self.bn_recalibrate and self.data is None:
            raise UsageError("--bn-batches needs --data (the images to re-estimate statistics on)")
        if self.batch_size <= 0:
            raise UsageError(f"--calib-batch-size {self.batch_size}: must be positive")
        if self.workers < 0:
            raise UsageError(f"--workers {self.workers}: must be ≥ 0")
        for name, value in (("--limit", self.limit), ("--eval-limit", self.eval_limit)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} {value}: must be positive")
        from agfprune.core.calibration import TARGETS as CALIB_TARGETS

        if self.calib_target not in CALIB_TARGETS:
            raise UsageError(f"--calib-loss {self.calib_target!r}: expected one of {', '.join(CALIB_TARGETS)}")
        if self.metric is not None:
            from agfprune.core.metrics import metric_class

            metric_class(self.metric)  # an unknown name fails here, before any loading
        if self.out.suffix != ".safetensors":
            raise UsageError(f"--out {self.out}: pruned checkpoints are .safetensors files")
        if self.scores is None:
            from agfprune.core.metrics import metric_class

            name = self.metric_name
            needs_stats = bool(getattr(metric_class(name), "requires_stats", False))
            if needs_stats and self.data is None and self.calib is None:
                raise UsageError(f"--metric {name} needs calibration: add --data D (images to calibrate on) "
                                 "or --calib F")
            if self.options.steps > 1 and needs_stats and self.data is None:
                raise UsageError(f"--steps {self.options.steps} with --metric {name} recalibrates between steps: "
                                 "add --data D")

    @property
    def metric_name(self) -> str:
        """--metric, or its default: agf when there is data to calibrate on, else magnitude-l2."""
        if self.metric:
            return self.metric
        with_data = self.data is not None or self.calib is not None
        return DEFAULT_METRIC_WITH_DATA if with_data else DEFAULT_METRIC_WITHOUT_DATA

    def check_data(self) -> None:
        """Checks that read the data folder but no model: enough images for the calibration asked for."""
        if self.data is None:
            return
        from agfprune.core.data import check_enough_batches

        needs_stats = self.scores is None and self.calib is None
        if needs_stats:
            from agfprune.core.metrics import metric_class

            needs_stats = bool(getattr(metric_class(self.metric_name), "requires_stats", False))
        if needs_stats:
            check_enough_batches(self.data, "train", self.calib_batches, self.batch_size, self.limit)
        else:
            check_enough_batches(self.data, "train", 1, self.batch_size, self.limit)


def _data_config(request: PruneRequest, loaded: Any, calib_stats: Any) -> dict[str, Any]:
    """The model's data config, then the calibration file's, then --img-size/--mean/--std."""
    from agfprune.core.data import calibrated_data_config

    config = calibrated_data_config(loaded.data_config, calib_stats.metadata if calib_stats is not None else None,
                                    request.data_overrides)
    loaded.check_input_size(config)
    return config


def _calibration_loader(request: PruneRequest, loaded: Any, device: torch.device) -> Any:
    from agfprune.core.data import LoaderOptions, build_transform, make_loader, open_dataset

    dataset = open_dataset(request.data, "train", build_transform(loaded.data_config, train=False),
                           request.skip_bad_images)
    options = LoaderOptions(batch_size=request.batch_size, workers=request.workers, limit=request.limit,
                            seed=request.seed, shuffle=True, drop_last=False)
    return make_loader(dataset, options, device)


def _scorer(request: PruneRequest, loaded: Any, loader: Any, device: torch.device,
            progress: Progress, calib_stats: Any = None) -> tuple[Any, dict[str, Any]]:
    """The Scorer for this request and the calibration provenance to record."""
    from agfprune.core.metrics import get_metric, metric_class

    if request.scores is not None:
        from agfprune.core.errors import ModelError
        from agfprune.core.scores_file import load_scores

        stored = load_scores(request.scores, request.metric)
        if stored.fingerprint and stored.fingerprint != loaded.fingerprint:
            raise ModelError(f"{request.scores} scores weights {stored.fingerprint} "
                             f"({stored.model.get('model') or 'another model'}), but the given model has "
                             f"fingerprint {loaded.fingerprint}; score this model first")
        if request.options.steps > 1:
            raise UsageError("--steps > 1 re-scores the pruned model between steps: use --metric with --data "
                             "instead of --scores")
        if request.options.normalizer is not None:
            raise UsageError("--normalizer applies when scoring: with --scores, pass it to `agfprune score`")
        provenance = {"scores_file": str(request.scores), **(stored.calibration or {})}
        return StoredScorer(stored.metric, stored.scores, str(request.scores)), provenance

    name = request.metric_name
    needs_stats = bool(getattr(metric_class(name), "requires_stats", False))
    provenance: dict[str, Any] = {}
    first_stats = None
    if request.calib is not None:
        from agfprune.core.calibration import check_matches, load_calibration
        from agfprune.core.scoring_run import calibration_provenance

        first_stats = calib_stats if calib_stats is not None else load_calibration(request.calib)
        check_matches(first_stats, loaded)
        provenance = {"calib_file": str(request.calib), **calibration_provenance(first_stats)}
    elif needs_stats and loader is None:
        raise UsageError(f"metric {name} needs calibration: add --data D (images to calibrate on) or --calib F")
    if request.options.steps > 1 and needs_stats and loader is None:
        raise UsageError(f"--steps {request.options.steps} with metric {name} recalibrates between steps: "
                         "add --data D")
    if needs_stats and request.calib is None:
        provenance = {"data": str(request.data), "split": "train", "batches": request.calib_batches,
                      "batch_size": request.batch_size, "limit": request.limit, "seed": request.seed,
                      "target": request.calib_target}

    def make_importance(model: torch.nn.Module, step: int) -> Any:
        stats = None
        if needs_stats:
            if step == 1 and first_stats is not None:
                stats = first_stats
            else:
                from agfprune.core.calibration import collect_statistics

                progress.log(f"calibrating {name} on {request.calib_batches} batches (step {step})")
                stats = collect_statistics(model, loader, device, batches=request.calib_batches,
                                           target=request.calib_target, progress=progress)
        return get_metric(name, stats=stats, seed=request.seed, normalizer=request.options.normalizer)

    return MetricScorer(name, make_importance), provenance


def run_prune(request: PruneRequest, progress: Progress = SILENT) -> tuple[PruneResult, dict[str, Any]]:
    """Prune as requested, write the checkpoint, and return the result and a JSON-ready summary."""
    from agfprune.core.atomic import check_outputs
    from agfprune.core.device import resolve_device, seed_everything
    from agfprune.core.pruning.bn_recalibration import reestimate_batchnorm
    from agfprune.core.pruning.save import save_pruned

    request.validate()
    check_outputs({"--out": request.out}, {"--checkpoint": request.checkpoint, "--calib": request.calib,
                                           "--scores": request.scores, "--data": request.data,
                                           "--eval-data": request.eval_data})
    request.check_data()
    device = resolve_device(request.device)
    seed_everything(request.seed)
    loaded = request.load_source(device)
    calib_stats = None
    if request.calib is not None:
        from agfprune.core.calibration import load_calibration

        calib_stats = load_calibration(request.calib)
    loaded.data_config = _data_config(request, loaded, calib_stats)
    loader = _calibration_loader(request, loaded, device) if request.data is not None else None
    scorer, provenance = _scorer(request, loaded, loader, device, progress, calib_stats)
    bn_batches = request.bn_recalibrate if request.bn_recalibrate is not None else (
        request.calib_batches if loader is not None else 0)
    notes: list[str] = []
    if loader is None:
        notes.append("no --data: BatchNorm statistics are not recalibrated after pruning (add --data to do so)")
    reestimate_bn = None
    if loader is not None and bn_batches > 0:
        def reestimate_bn(model: torch.nn.Module) -> int:
            return reestimate_batchnorm(model, loader, device, bn_batches, progress)

    result = prune_model(loaded, scorer, request.options, reestimate_bn=reestimate_bn, calibration=provenance,
                         seed=request.seed, progress=progress)
    fingerprint = save_pruned(request.out, loaded, result)
    record = result.record
    from agfprune.core.widths_report import describe_widths, summarize_widths, width_rows

    width_summary = summarize_widths(width_rows(loaded.model, result.model))
    achieved = achieved_channel_ratio(record)
    notes.extend(round_to_notes(request.options, record.channel_ratio, achieved))
    summary: dict[str, Any] = {
        "model": loaded.arch,
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "out": str(request.out),
        "fingerprint": fingerprint,
        **{k: v for k, v in record.summary().items() if k not in ("base_arch",)},
        "achieved_channel_ratio": achieved,
        "widths": describe_widths(width_summary),
        "width_summary": width_summary,
        "device": str(device),
        "notes": notes,
    }
    if request.eval_data is not None:
        summary.update(_evaluate(request, loaded, result, device, progress))
    return result, summary


def achieved_channel_ratio(record: Any) -> float:
    """Fraction of all prunable groups' channels actually removed (after rounding and caps)."""
    total = sum(int(group["channels"]) for group in record.groups.values())
    kept = sum(len(group["kept"]) for group in record.groups.values())
    return round(1.0 - kept / total, 4) if total else 0.0


def round_to_notes(options: PruneOptions, channel_ratio: float, achieved: float) -> list[str]:
    """--round-to keeps widths at multiples of K: say when that moved the channel ratio by more than a
    point, or removed nothing at all."""
    if not options.round_to:
        return []
    if achieved <= 0.0:
        return [f"--round-to {options.round_to} removed no channel: every group is narrower than the rounding "
                f"step allows at channel ratio {channel_ratio:g}; use a smaller --round-to or a larger --ratio"]
    if abs(achieved - channel_ratio) > 0.01:
        return [f"--round-to {options.round_to} moved the channel ratio from {channel_ratio:g} to {achieved:.4f} "
                f"(achieved {100 * achieved:.1f}% of channels removed)"]
    return []


def _evaluate(request: PruneRequest, loaded: Any, result: PruneResult, device: torch.device,
              progress: Progress) -> dict[str, Any]:
    from agfprune.core.data import LoaderOptions, build_transform, make_loader, open_dataset
    from agfprune.core.evaluate import evaluate_accuracy

    config = dict(loaded.data_config, input_size=tuple(result.record.input_size))
    dataset = open_dataset(request.eval_data, "val", build_transform(config, train=False), request.skip_bad_images)
    loader = make_loader(dataset, LoaderOptions(batch_size=max(request.batch_size, 128), workers=request.workers,
                                                limit=request.eval_limit, seed=request.seed), device)
    accuracy = evaluate_accuracy(result.model, loader, device, amp=False, progress=progress)
    return {"eval_data": str(request.eval_data), "eval_samples": accuracy.samples,
            "top1": round(accuracy.top1, 4), "top5": round(accuracy.top5, 4), "loss": round(accuracy.loss, 6)}
