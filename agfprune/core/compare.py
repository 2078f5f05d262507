"""The stress test: every metric × allocation × ratio × seed, pruned, BN-recalibrated, evaluated,
optionally fine-tuned with one shared budget, and evaluated again.

Allocation: `local` removes the ratio from every group; `global` ranks channels across groups (raw
loss units for AGF/Taylor/SNIP, per-group normalised scores otherwise); `global-cost` ranks by
utility per parameter or MAC freed. Every evaluation is also reported on the two seeded halves of
the evaluation split, so that a choice (a default, a normaliser) can be made on the first half and
reported on the second.

One calibration pass per seed serves every metric (seeds vary the calibration batches and the
random metric). Each finished cell is written to DIR/cells/ at once, so an interrupted comparison
resumes where it stopped; results.json holds only deterministic numbers (timings go to
timings.json), so the same command with the same seeds reproduces it byte for byte on one machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agfprune import __version__
from agfprune.core.atomic import check_writable, write_text_atomic
from agfprune.core.data import LoaderOptions, build_transform, cache_decoded, make_loader, open_dataset
from agfprune.core.device import seed_everything
from agfprune.core.errors import UsageError
from agfprune.core.evaluate import count_cost, evaluate_accuracy
from agfprune.core.models import LoadedModel
from agfprune.core.progress import SILENT, Progress

RESULTS_FORMAT = "agfprune-compare"
RESULTS_VERSION = 2
ALLOCATIONS = ("local", "global", "global-cost")
HALVES = ("select", "report")  # the first and second seeded halves of the evaluation split


@dataclass
class CompareConfig:
    """What to compare and with which budget (see `agfprune compare --help`)."""

    calib_data: str
    eval_data: str
    out: Path
    metrics: list[str]
    ratios: list[float]
    seeds: int = 3
    target: str = "channels"
    calib_batches: int = 16
    calib_batch_size: int = 64
    bn_batches: int = 16
    eval_limit: int | None = None
    eval_batch_size: int = 256
    finetune_epochs: int = 0
    finetune_limit: int | None = None
    finetune_lr: float = 0.01
    finetune_batch_size: int = 64
    workers: int = 0
    allocations: list[str] = field(default_factory=lambda: ["local"])
    normalizer: str | None = None
    prune_heads: bool = False

    def prune_options(self, ratio: float, allocation: str) -> Any:
        from agfprune.core.pruning import PruneOptions

        return PruneOptions(ratio=ratio, target=self.target, global_pruning=allocation != "local",
                            cost_aware=allocation == "global-cost", normalizer=self.normalizer,
                            prune_heads=self.prune_heads)

    def validate(self) -> None:
        from agfprune.core.metrics import metric_class
        from agfprune.core.pruning import PruneOptions

        if not self.metrics:
            raise UsageError("--metrics: give at least one metric")
        for metric in self.metrics:
            metric_class(metric)
        if len(set(self.metrics)) != len(self.metrics):
            raise UsageError("--metrics: a metric is listed twice")
        if not self.ratios:
            raise UsageError("--ratios: give at least one ratio")
        if not self.allocations or len(set(self.allocations)) != len(self.allocations):
            raise UsageError("--allocation: give each of local, global, global-cost at most once")
        for allocation in self.allocations:
            if allocation not in ALLOCATIONS:
                raise UsageError(f"--allocation {allocation!r}: expected a comma list of {', '.join(ALLOCATIONS)}")
        for ratio in self.ratios:
            for allocation in self.allocations:
                self.prune_options(ratio, allocation).validate()
        if self.seeds < 1:
            raise UsageError(f"--seeds {self.seeds}: must be at least 1")
        for name in ("calib_batches", "calib_batch_size", "eval_batch_size", "finetune_batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")
        if self.bn_batches < 0 or self.finetune_epochs < 0:
            raise UsageError("--bn-batches and --finetune-epochs must be ≥ 0")
        for name in ("eval_limit", "finetune_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")
        if self.workers < 0:
            raise UsageError(f"--workers {self.workers}: must be ≥ 0")
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise UsageError(f"--finetune-lr {self.finetune_lr}: must be positive")

    def cell_settings(self) -> dict[str, Any]:
        """The settings a cell's result depends on (besides metric, ratio and seed)."""
        keys = ("calib_data", "eval_data", "target", "calib_batches", "calib_batch_size", "bn_batches",
                "eval_limit", "finetune_epochs", "finetune_limit", "finetune_lr", "finetune_batch_size", "normalizer",
                "prune_heads")
        return {key: getattr(self, key) for key in keys}


@dataclass
class Cell:
    """One metric × allocation × ratio × seed result."""

    metric: str
    ratio: float
    seed: int
    top1_pruned: float
    top1_finetuned: float | None
    loss_pruned: float
    params: int
    macs: int
    kept: dict[str, list[int]] = field(default_factory=dict)
    settings_key: str = ""
    allocation: str = "local"
    # top-1 on the seeded halves of the evaluation split: {"pruned": {"select": .., "report": ..}, ...}
    halves: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return cell_key(self.metric, self.allocation, self.ratio, self.seed)


def cell_key(metric: str, allocation: str, ratio: float, seed: int) -> str:
    return f"{metric}_{allocation}_r{ratio:g}_s{seed}"


def _settings_key(loaded: LoadedModel, config: CompareConfig) -> str:
    text = json.dumps({"fingerprint": loaded.fingerprint, **config.cell_settings()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Runner:
    """Holds the dense model, data and per-seed calibration; computes cells on demand."""

    def __init__(self, loaded: LoadedModel, config: CompareConfig, device: torch.device,
                 progress: Progress) -> None:
        self.loaded = loaded
        self.config = config
        self.device = device
        self.progress = progress
        self.stats: dict[int, Any] = {}
        eval_transform = build_transform(loaded.data_config)
        # decoded images are cached: every cell re-reads the same calibration, BN and eval images
        self.calib_set = cache_decoded(open_dataset(config.calib_data, "train", eval_transform))
        self.eval_set = cache_decoded(open_dataset(config.eval_data, "val", eval_transform))
        self.train_set = None
        if config.finetune_epochs:
            self.train_set = open_dataset(config.calib_data, "train", build_transform(loaded.data_config, train=True))
            if hasattr(self.calib_set, "loader"):  # share one cache of decoded training images
                self.train_set.loader = self.calib_set.loader  # type: ignore[union-attr]
        self.settings_key = _settings_key(loaded, config)

    def _calib_loader(self, seed: int, batch_size: int) -> Any:
        options = LoaderOptions(batch_size=batch_size, workers=self.config.workers, seed=seed, shuffle=True,
                                drop_last=True)
        return make_loader(self.calib_set, options, self.device)

    def evaluate(self, model: torch.nn.Module) -> tuple[Any, dict[str, float]]:
        """Accuracy on the evaluation split, and top-1 on each of its two seeded halves."""
        from agfprune.core.data import half_indices
        from agfprune.core.evaluate import accuracy_from_logits, predict_logits

        options = LoaderOptions(batch_size=self.config.eval_batch_size, workers=self.config.workers,
                                limit=self.config.eval_limit, seed=0)
        logits, labels = predict_logits(model, make_loader(self.eval_set, options, self.device), self.device)
        correct = logits.argmax(1).eq(labels).double()
        halves = {name: round(100.0 * float(correct[half_indices(len(labels), half)].mean()), 4)
                  for name, half in zip(HALVES, ("first", "second"))}
        return accuracy_from_logits(logits, labels), halves

    def calibration(self, seed: int) -> Any:
        from agfprune.core.calibration import calibrate

        if seed not in self.stats:
            self.progress.log(f"calibrating on {self.config.calib_batches} batches (seed {seed})")
            loader = self._calib_loader(seed, self.config.calib_batch_size)
            self.stats[seed] = calibrate(self.loaded.model, loader, self.device,
                                         batches=self.config.calib_batches, progress=self.progress)
        return self.stats[seed]

    def run_cell(self, metric: str, allocation: str, ratio: float, seed: int) -> Cell:
        from agfprune.core.metrics import get_metric
        from agfprune.core.pruning import MetricScorer, prune_model, recalibrate_batchnorm

        stats = self.calibration(seed)  # once per seed; it also checks the data gives enough batches
        normalizer = self.config.normalizer
        scorer = MetricScorer(metric, lambda _model, _step: get_metric(metric, stats=stats, seed=seed,
                                                                       normalizer=normalizer))
        bn_seed = seed + 10_000  # BN batches differ from calibration batches but repeat per seed

        def recalibrate(model: torch.nn.Module) -> int:
            loader = self._calib_loader(bn_seed, self.config.calib_batch_size)
            return recalibrate_batchnorm(model, loader, self.device, self.config.bn_batches)

        seed_everything(seed)
        result = prune_model(self.loaded, scorer, self.config.prune_options(ratio, allocation),
                             recalibrate=recalibrate if self.config.bn_batches else None, seed=seed)
        pruned, halves = self.evaluate(result.model)
        all_halves = {"pruned": halves}
        finetuned = None
        if self.config.finetune_epochs:
            self._finetune(result.model, seed)
            finetuned_accuracy, all_halves["finetuned"] = self.evaluate(result.model)
            finetuned = finetuned_accuracy.top1
        kept = {name: group["kept"] for name, group in sorted(result.record.groups.items())}
        return Cell(metric=metric, ratio=ratio, seed=seed, top1_pruned=pruned.top1, top1_finetuned=finetuned,
                    loss_pruned=pruned.loss, params=result.record.params_after, macs=result.record.macs_after,
                    kept=kept, settings_key=self.settings_key, allocation=allocation, halves=all_halves)

    def _finetune(self, model: torch.nn.Module, seed: int) -> None:
        """The same short budget for every cell: SGD + cosine, no distillation."""
        from agfprune.core.train import LossConfig, Trainer, build_optimizer, warmup_cosine

        seed_everything(seed)
        options = LoaderOptions(batch_size=self.config.finetune_batch_size, workers=self.config.workers,
                                limit=self.config.finetune_limit, seed=seed, shuffle=True, drop_last=True)
        loader = make_loader(self.train_set, options, self.device)
        optimizer = build_optimizer(model, "sgd", self.config.finetune_lr, 5e-4)
        schedule = warmup_cosine(optimizer, total_steps=len(loader) * self.config.finetune_epochs,
                                 warmup_steps=min(50, len(loader) // 10))
        trainer = Trainer(model, optimizer, schedule, LossConfig(), self.device)
        step = 0
        for epoch in range(self.config.finetune_epochs):
            for images, labels in self.progress.track(loader, total=len(loader),
                                                      description=f"finetune {epoch + 1}/{self.config.finetune_epochs}"):
                trainer.step(images, labels, step)
                step += 1
        model.eval()


def _load_cell(path: Path, settings_key: str) -> Cell | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("settings_key") != settings_key:
        return None
    return Cell(**data)


def run_compare(loaded: LoadedModel, config: CompareConfig, device: torch.device,
                progress: Progress = SILENT) -> dict[str, Any]:
    """Compute (or reuse) every cell, then write results.json, results.md, the plot and overlaps."""
    config.validate()
    check_writable(config.out / "results.json")
    cells_dir = config.out / "cells"  # created by the first cell's write: a failed start leaves no folder
    runner = _Runner(loaded, config, device, progress)
    dense, dense_halves = runner.evaluate(loaded.model)
    dense_cost = count_cost(loaded.model, loaded.input_size, device)
    cells: list[Cell] = []
    timings: dict[str, float] = {}
    plan = [(m, a, r, s) for s in range(config.seeds) for r in config.ratios for a in config.allocations
            for m in config.metrics]
    for index, (metric, allocation, ratio, seed) in enumerate(plan, start=1):
        key = cell_key(metric, allocation, ratio, seed)
        path = cells_dir / f"{key}.json"
        cell = _load_cell(path, runner.settings_key) if path.exists() else None
        if cell is None:
            started = time.perf_counter()
            cell = runner.run_cell(metric, allocation, ratio, seed)
            timings[key] = round(time.perf_counter() - started, 2)
            write_text_atomic(path, json.dumps(asdict(cell), sort_keys=True))
            progress.log(f"[{index}/{len(plan)}] {key}: top-1 {cell.top1_pruned:.2f}"
                         + (f" → {cell.top1_finetuned:.2f} after finetuning" if cell.top1_finetuned is not None else ""))
        cells.append(cell)
    results = summarise(loaded, config, cells, dense.top1, dense_cost, dense_halves)
    write_outputs(config.out, results, cells)
    if timings:
        write_text_atomic(config.out / "timings.json", json.dumps(timings, indent=1, sort_keys=True))
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return round(mean, 4), round(std, 4)


def jaccard_overlaps(cells: list[Cell], metrics: list[str], ratio: float,
                     allocation: str = "local") -> dict[str, dict[str, float]]:
    """Mean over seeds and groups of |kept_A ∩ kept_B| / |kept_A ∪ kept_B| for each metric pair."""
    by_key = {(c.metric, c.seed): c for c in cells if c.ratio == ratio and c.allocation == allocation}
    seeds = sorted({c.seed for c in cells})
    table: dict[str, dict[str, float]] = {}
    for first in metrics:
        table[first] = {}
        for second in metrics:
            values = []
            for seed in seeds:
                a, b = by_key.get((first, seed)), by_key.get((second, seed))
                if a is None or b is None:
                    continue
                for group in a.kept.keys() & b.kept.keys():
                    left, right = set(a.kept[group]), set(b.kept[group])
                    union = left | right
                    if union:
                        values.append(len(left & right) / len(union))
            table[first][second] = round(statistics.fmean(values), 4) if values else math.nan
    return table


def summarise(loaded: LoadedModel, config: CompareConfig, cells: list[Cell], dense_top1: float,
              dense_cost: Any, dense_halves: dict[str, float] | None = None) -> dict[str, Any]:
    """Mean ± std per metric, allocation and ratio (whole split and each half), ranks, and whether each
    metric beats random (same allocation) beyond its spread."""
    stages = ["pruned"] + (["finetuned"] if config.finetune_epochs else [])
    summary: list[dict[str, Any]] = []
    for ratio in config.ratios:
        for allocation in config.allocations:
            rows = []
            for metric in config.metrics:
                group = [c for c in cells if c.metric == metric and c.ratio == ratio and c.allocation == allocation]
                if not group:
                    continue
                row: dict[str, Any] = {"metric": metric, "allocation": allocation, "ratio": ratio,
                                       "seeds": len(group), "params": round(statistics.fmean(c.params for c in group)),
                                       "macs": round(statistics.fmean(c.macs for c in group))}
                for stage in stages:
                    values = [c.top1_pruned if stage == "pruned" else c.top1_finetuned for c in group]
                    row[f"top1_{stage}_mean"], row[f"top1_{stage}_std"] = _mean_std(values)  # type: ignore[arg-type]
                    for half in HALVES:
                        halves = [c.halves.get(stage, {}).get(half) for c in group]
                        if all(v is not None for v in halves):
                            row[f"top1_{stage}_{half}_mean"], row[f"top1_{stage}_{half}_std"] = _mean_std(halves)
                rows.append(row)
            for stage in stages:
                ordered = sorted(rows, key=lambda r: -r[f"top1_{stage}_mean"])
                for rank, row in enumerate(ordered, start=1):
                    row[f"rank_{stage}"] = rank
                baseline = next((r for r in rows if r["metric"] == "random"), None)
                for row in rows:
                    if baseline is None or row is baseline:
                        row[f"beats_random_{stage}"] = None
                        continue
                    low = row[f"top1_{stage}_mean"] - row[f"top1_{stage}_std"]
                    high = baseline[f"top1_{stage}_mean"] + baseline[f"top1_{stage}_std"]
                    row[f"beats_random_{stage}"] = bool(low > high)
            summary.extend(rows)
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "agfprune_version": __version__,
        "model": loaded.arch,
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "fingerprint": loaded.fingerprint,
        "settings": {**config.cell_settings(), "metrics": config.metrics, "ratios": config.ratios,
                     "seeds": config.seeds, "allocations": config.allocations},
        "dense": {"top1": round(dense_top1, 4), "params": dense_cost.params, "macs": dense_cost.macs,
                  **({f"top1_{half}": value for half, value in dense_halves.items()} if dense_halves else {})},
        "summary": summary,
        "overlap": {f"{ratio:g}/{allocation}": jaccard_overlaps(cells, config.metrics, ratio, allocation)
                    for ratio in config.ratios for allocation in config.allocations},
        "cells": [{k: v for k, v in asdict(c).items() if k not in ("kept", "settings_key")} for c in cells],
    }


def render_markdown(results: dict[str, Any]) -> str:
    """results.md: one table per ratio and allocation with mean ± std (whole split, select and report
    halves), size, rank and the random-baseline test."""
    settings = results["settings"]
    stages = ["pruned", "finetuned"] if settings["finetune_epochs"] else ["pruned"]
    dense = results["dense"]
    lines = [f"# agfprune compare: {results['model']}", "",
             f"Dense: top-1 {dense['top1']:.2f}%, {dense['params']:,} params, {dense['macs']:,} MACs. "
             f"Seeds: {settings['seeds']}; calibration {settings['calib_batches']}×"
             f"{settings['calib_batch_size']} images; BN recalibration "
             f"{settings['bn_batches']} batches; finetuning "
             f"{settings['finetune_epochs']} epoch(s) on "
             f"{settings['finetune_limit'] or 'all'} images; normaliser "
             f"{settings.get('normalizer') or 'each metric default'}.", "",
             "`beats random`: mean − std above random's mean + std (same allocation). `select`/`report`: top-1 "
             "on the first/second seeded half of the evaluation split (choose on select, report on report).", ""]
    for ratio in settings["ratios"]:
        for allocation in settings.get("allocations", ["local"]):
            rows = [r for r in results["summary"] if r["ratio"] == ratio and r.get("allocation", "local") == allocation]
            if not rows:
                continue
            header = ["metric", "params", "MACs"]
            for stage in stages:
                header += [f"top-1 {stage}", "select", "report", "rank", "beats random"]
            lines += [f"## ratio {ratio:g} ({settings['target']}), {allocation} allocation", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row in sorted(rows, key=lambda r: r[f"rank_{stages[-1]}"]):
                cells = [row["metric"], f"{row['params']:,} ({100 * (1 - row['params'] / dense['params']):.0f}% less)",
                         f"{row['macs']:,} ({100 * (1 - row['macs'] / dense['macs']):.0f}% less)"]
                for stage in stages:
                    beats = row[f"beats_random_{stage}"]
                    halves = [f"{row[f'top1_{stage}_{half}_mean']:.2f}" if f"top1_{stage}_{half}_mean" in row else "–"
                              for half in HALVES]
                    cells += [f"{row[f'top1_{stage}_mean']:.2f} ± {row[f'top1_{stage}_std']:.2f}", *halves,
                              str(row[f"rank_{stage}"]), "–" if beats is None else ("yes" if beats else "no")]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            overlap = results["overlap"].get(f"{ratio:g}/{allocation}", {})
            names = list(overlap)
            if len(names) > 1:
                lines += ["Jaccard overlap of kept channels (mean over groups and seeds):", "",
                          "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
                for first in names:
                    lines.append(f"| {first} | " + " | ".join(f"{overlap[first][second]:.2f}" for second in names) + " |")
                lines.append("")
    return "\n".join(lines)


def write_plot(path: Path, results: dict[str, Any]) -> None:
    """Accuracy vs ratio per metric with std error bars (one panel per stage), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agfprune.core.atomic import atomic_path

    stages = ["pruned", "finetuned"] if results["settings"]["finetune_epochs"] else ["pruned"]
    figure, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4.5), squeeze=False)
    for axis, stage in zip(axes[0], stages):
        allocations = results["settings"].get("allocations", ["local"])
        for metric in results["settings"]["metrics"]:
            for allocation in allocations:
                rows = sorted((r for r in results["summary"] if r["metric"] == metric
                               and r.get("allocation", "local") == allocation), key=lambda r: r["ratio"])
                if not rows:
                    continue
                label = metric if len(allocations) == 1 else f"{metric} ({allocation})"
                axis.errorbar([r["ratio"] for r in rows], [r[f"top1_{stage}_mean"] for r in rows],
                              yerr=[r[f"top1_{stage}_std"] for r in rows], marker="o", capsize=3, label=label)
        axis.axhline(results["dense"]["top1"], color="black", linestyle="--", linewidth=1, label="dense")
        axis.set_xlabel(f"pruning ratio ({results['settings']['target']})")
        axis.set_ylabel("top-1 (%)")
        axis.set_title(f"{results['model']}: {'after BN recalibration' if stage == 'pruned' else 'after finetuning'}")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)


def write_outputs(out: Path, results: dict[str, Any], cells: list[Cell]) -> None:
    write_text_atomic(out / "results.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_text_atomic(out / "results.md", render_markdown(results))
    write_plot(out / "accuracy.png", results)
