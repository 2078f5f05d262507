"""The stress test: every metric × allocation × ratio × seed, pruned, BatchNorm re-estimated, evaluated,
optionally fine-tuned with one shared budget (optionally distilled from the dense model), and
evaluated again; optionally a from-scratch baseline per pruned shape (`--baselines scratch`).

Allocation: `local` removes the ratio from every group; `global` ranks channels across groups (raw
loss units for AGF/Taylor/SNIP, per-group normalised scores otherwise); `global-cost` ranks by
utility per parameter or MAC freed. Every evaluation is also reported on the two seeded halves of
the evaluation split, so that a choice (a default, a normaliser) can be made on the first half and
reported on the second.

One calibration pass per seed serves every metric (seeds vary the calibration batches and the
random metric). Each finished cell is written to DIR/cells/ at once, so an interrupted comparison
resumes where it stopped; results.json holds only deterministic numbers (timings go to
timings.json), so the same command with the same seeds reproduces it byte for byte on one machine.

Under `torchrun` the cells are spread over the ranks (cell i on rank i % world size); the ranks share
nothing but the output folder, so a cell may take hours without any collective timing out; rank 0
waits for every cell file and writes the reports (statistics in `agfprune.core.compare_report`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agfprune.core.atomic import check_writable, write_text_atomic
from agfprune.core.compare_report import (HALVES, jaccard_overlaps, render_markdown, summarize,  # noqa: F401
                                          write_outputs)
from agfprune.core.data import LoaderOptions, build_transform, cache_decoded, make_loader, open_dataset
from agfprune.core.device import seed_everything
from agfprune.core.distributed import agree_with_rank_zero
from agfprune.core.errors import UsageError
from agfprune.core.evaluate import count_cost
from agfprune.core.models import LoadedModel
from agfprune.core.progress import SILENT, Progress
from agfprune.core.tensor_batches import AugmentedBatches, DecodedImages, supports_tensor_batches, uint8_transform

ALLOCATIONS = ("local", "global", "global-cost")
BASELINES = ("scratch",)
SCRATCH = "scratch"  # the metric name of from-scratch baseline cells
KD_ALPHA, KD_TEMPERATURE = 0.5, 4.0  # --finetune-teacher: half cross-entropy, half distillation at T = 4
FINETUNE_PIPELINE = "tensor-1"  # bumped when the finetune loop changes what a cell computes
POLL_SECONDS = 2.0  # rank 0 looks for the other ranks' cell files this often
# the files a run writes in its --out folder (besides cells/*.json)
COMPARE_FILES = ("results.json", "results.md", "accuracy.png", "timings.json")


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
    finetune_teacher: bool = False  # distil from the dense model being pruned
    baselines: list[str] = field(default_factory=list)
    scratch_epochs: int | None = None  # None: the finetuning budget
    reference: str = "agf"  # paired differences against it; the scratch baselines take its shapes
    report_only: bool = False  # write reports from the finished cells, compute nothing

    @property
    def scratch_budget(self) -> int:
        return self.finetune_epochs if self.scratch_epochs is None else self.scratch_epochs

    def plan(self) -> list[tuple[str, str, float, int]]:
        """Every (metric, allocation, ratio, seed) cell, scratch baselines last within a seed."""
        extra = [SCRATCH] if SCRATCH in self.baselines else []
        return [(m, a, r, s) for s in range(self.seeds) for r in self.ratios for a in self.allocations
                for m in self.metrics + extra]

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
        for name, option in (("calib_batches", "--calib-batches"), ("calib_batch_size", "--calib-batch-size"),
                             ("eval_batch_size", "--batch-size"), ("finetune_batch_size", "finetune batch size")):
            if getattr(self, name) < 1:
                raise UsageError(f"{option} {getattr(self, name)}: must be positive")
        if self.bn_batches < 0 or self.finetune_epochs < 0:
            raise UsageError("--bn-batches and --finetune-epochs must be ≥ 0")
        for name in ("eval_limit", "finetune_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")
        if self.workers < 0:
            raise UsageError(f"--workers {self.workers}: must be ≥ 0")
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise UsageError(f"--finetune-lr {self.finetune_lr}: must be positive")
        for baseline in self.baselines:
            if baseline not in BASELINES:
                raise UsageError(f"--baselines {baseline!r}: expected a comma list of {', '.join(BASELINES)}")
        if self.scratch_epochs is not None and self.scratch_epochs < 1:
            raise UsageError(f"--scratch-epochs {self.scratch_epochs}: must be ≥ 1")
        if SCRATCH in self.baselines and self.scratch_budget < 1:
            raise UsageError("--baselines scratch trains the pruned shapes from scratch: give --finetune-epochs "
                             "or --scratch-epochs")
        if SCRATCH in self.baselines and self.reference not in self.metrics:
            raise UsageError(f"--baselines scratch takes its shapes from --reference {self.reference}, which "
                             f"is not in --metrics")
        metric_class(self.reference)
        if self.finetune_teacher and not self.finetune_epochs:
            raise UsageError("--finetune-teacher distils during finetuning: give --finetune-epochs")

    def cell_settings(self) -> dict[str, Any]:
        """The settings a cell's result depends on (besides metric, ratio and seed)."""
        keys = ("calib_data", "eval_data", "target", "calib_batches", "calib_batch_size", "bn_batches",
                "eval_limit", "finetune_epochs", "finetune_limit", "finetune_lr", "finetune_batch_size", "normalizer",
                "prune_heads")
        settings = {key: getattr(self, key) for key in keys}
        if self.finetune_epochs:  # only when finetuning, so that cells without it keep their keys
            settings.update(finetune_teacher=self.finetune_teacher, finetune_pipeline=FINETUNE_PIPELINE)
        return settings

    def scratch_settings(self) -> dict[str, Any]:
        """What a scratch cell depends on besides `cell_settings`: its budget and shape source."""
        return {"scratch_epochs": self.scratch_budget, "shape_from": self.reference, "pipeline": FINETUNE_PIPELINE}


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
    # how the cell ran: timings.json only, never results.json (a --report-only run must not restate them)
    seconds: float | None = None  # wall time
    threads: int | None = None  # torch threads of the rank that computed it
    world_size: int | None = None  # ranks sharing the machine while it ran
    rank: int | None = None  # the rank that computed it

    @property
    def key(self) -> str:
        return cell_key(self.metric, self.allocation, self.ratio, self.seed)


def cell_key(metric: str, allocation: str, ratio: float, seed: int) -> str:
    return f"{metric}_{allocation}_r{ratio:g}_s{seed}"


def _settings_key(loaded: LoadedModel, config: CompareConfig, scratch: bool = False) -> str:
    settings = {"fingerprint": loaded.fingerprint, **config.cell_settings()}
    if scratch:
        settings.update(config.scratch_settings())
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reinitialise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh weights for the same structure, by the model's own initialisation: every module's
    `reset_parameters` (torch defaults, BN statistics reset), then the model's `init_weights()`
    when it has one (timm ViTs, ResNets, agfprune's CIFAR ResNets). Parameters that do not train
    (the option-A shortcut's fixed channel map) are structure, not weights, and are kept."""
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    seed_everything(seed)
    with torch.no_grad():
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        init_weights = getattr(model, "init_weights", None)
        if callable(init_weights):
            init_weights()
        parameters = dict(model.named_parameters())
        for name, value in frozen.items():
            parameters[name].copy_(value)
            parameters[name].requires_grad_(False)
    return model


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
        self.train_images: DecodedImages | None = None
        self.train_set = None
        if config.finetune_epochs or config.scratch_budget and SCRATCH in config.baselines:
            if supports_tensor_batches(loaded.data_config):  # decoded once, augmented as tensors
                self.train_set = open_dataset(config.calib_data, "train", uint8_transform(loaded.data_config))
            else:
                self.train_set = open_dataset(config.calib_data, "train",
                                              build_transform(loaded.data_config, train=True))
            if hasattr(self.calib_set, "loader"):  # share one cache of decoded training images
                self.train_set.loader = self.calib_set.loader  # type: ignore[union-attr]
            if supports_tensor_batches(loaded.data_config):
                self.train_images = DecodedImages(self.train_set, loaded.data_config, config.workers)
        self.settings_key = _settings_key(loaded, config)
        self.scratch_key = _settings_key(loaded, config, scratch=True)

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
        from agfprune.core.calibration import collect_statistics

        if seed not in self.stats:
            self.progress.log(f"calibrating on {self.config.calib_batches} batches (seed {seed})")
            loader = self._calib_loader(seed, self.config.calib_batch_size)
            self.stats[seed] = collect_statistics(self.loaded.model, loader, self.device,
                                                  batches=self.config.calib_batches, progress=self.progress)
        return self.stats[seed]

    def _prune(self, metric: str, allocation: str, ratio: float, seed: int) -> Any:
        from agfprune.core.metrics import get_metric
        from agfprune.core.pruning import MetricScorer, prune_model, reestimate_batchnorm

        stats = self.calibration(seed)  # once per seed; it also checks the data gives enough batches
        normalizer = self.config.normalizer
        scorer = MetricScorer(metric, lambda _model, _step: get_metric(metric, stats=stats, seed=seed,
                                                                       normalizer=normalizer))
        bn_seed = seed + 10_000  # BN batches differ from calibration batches but repeat per seed

        def reestimate_bn(model: torch.nn.Module) -> int:
            loader = self._calib_loader(bn_seed, self.config.calib_batch_size)
            return reestimate_batchnorm(model, loader, self.device, self.config.bn_batches)

        seed_everything(seed)
        return prune_model(self.loaded, scorer, self.config.prune_options(ratio, allocation),
                           reestimate_bn=reestimate_bn if self.config.bn_batches else None, seed=seed)

    def run_cell(self, metric: str, allocation: str, ratio: float, seed: int) -> Cell:
        if metric == SCRATCH:
            return self.run_scratch(allocation, ratio, seed)
        result = self._prune(metric, allocation, ratio, seed)
        pruned, halves = self.evaluate(result.model)
        all_halves = {"pruned": halves}
        finetuned = None
        if self.config.finetune_epochs:
            self.finetune(result.model, seed, self.config.finetune_epochs)
            finetuned_accuracy, all_halves["finetuned"] = self.evaluate(result.model)
            finetuned = finetuned_accuracy.top1
        kept = {name: group["kept"] for name, group in sorted(result.record.groups.items())}
        return Cell(metric=metric, ratio=ratio, seed=seed, top1_pruned=pruned.top1, top1_finetuned=finetuned,
                    loss_pruned=pruned.loss, params=result.record.params_after, macs=result.record.macs_after,
                    kept=kept, settings_key=self.settings_key, allocation=allocation, halves=all_halves)

    def run_scratch(self, allocation: str, ratio: float, seed: int) -> Cell:
        """The reference metric's pruned shape (same allocation, ratio and seed), re-initialised by the
        model's own init and trained with the finetuning budget (or --scratch-epochs)."""
        result = self._prune(self.config.reference, allocation, ratio, seed)
        model = reinitialise(result.model, seed)
        initial, halves = self.evaluate(model)
        self.finetune(model, seed, self.config.scratch_budget, teacher=False)
        trained, all_halves = self.evaluate(model)
        return Cell(metric=SCRATCH, ratio=ratio, seed=seed, top1_pruned=initial.top1, top1_finetuned=trained.top1,
                    loss_pruned=initial.loss, params=result.record.params_after, macs=result.record.macs_after,
                    kept={name: group["kept"] for name, group in sorted(result.record.groups.items())},
                    settings_key=self.scratch_key, allocation=allocation,
                    halves={"pruned": halves, "finetuned": all_halves})

    def training_batches(self, seed: int) -> Any:
        """The seeded training stream of one cell: tensor-augmented batches for small inputs, else
        timm's PIL pipeline through a DataLoader (its random state seeded by the cell's seed)."""
        if self.train_images is not None:
            return AugmentedBatches(self.train_images, self.loaded.data_config, self.config.finetune_batch_size,
                                    seed, self.config.finetune_limit)
        options = LoaderOptions(batch_size=self.config.finetune_batch_size, workers=self.config.workers,
                                limit=self.config.finetune_limit, seed=seed, shuffle=True, drop_last=True)
        return make_loader(self.train_set, options, self.device)

    def finetune(self, model: torch.nn.Module, seed: int, epochs: int, teacher: bool | None = None) -> None:
        """The same budget for every cell: SGD + warm-up cosine over `epochs` passes of the
        (seeded) finetuning subset, distilled from the dense model with --finetune-teacher."""
        from agfprune.core.train import LossConfig, Trainer, build_optimizer, warmup_cosine

        seed_everything(seed)
        batches = self.training_batches(seed)
        optimizer = build_optimizer(model, "sgd", self.config.finetune_lr, 5e-4)
        schedule = warmup_cosine(optimizer, total_steps=len(batches) * epochs,
                                 warmup_steps=min(50, len(batches) // 10))
        distil = self.config.finetune_teacher if teacher is None else teacher
        loss = LossConfig(kd_alpha=KD_ALPHA, kd_temperature=KD_TEMPERATURE) if distil else LossConfig()
        trainer = Trainer(model, optimizer, schedule, loss, self.device,
                          teacher=self.loaded.model if distil else None)
        step = 0
        for epoch in range(epochs):
            for images, labels in self.progress.track(batches, total=len(batches),
                                                      description=f"finetune {epoch + 1}/{epochs}"):
                trainer.step(images, labels, step)
                step += 1
        model.eval()


def _load_cell(path: Path, settings_key: str) -> Cell | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("settings_key") != settings_key:
        return None
    try:
        return Cell(**data)
    except TypeError:  # a cell file of another agfprune version
        return None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (torchrun's RANK/WORLD_SIZE; 0 and 1 without it)."""
    try:
        world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UsageError("RANK and WORLD_SIZE must be integers (torchrun sets them)") from None
    if not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, world


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '2 h 05 min': an ETA a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def run_compare(loaded: LoadedModel, config: CompareConfig, device: torch.device,
                progress: Progress = SILENT) -> dict[str, Any] | None:
    """Compute (or reuse) every cell, then write results.json, results.md, the plot and timings.

    Under torchrun the cells left unfinished (as rank 0 finds them) are dealt round-robin over the
    ranks; rank 0 then waits for the others' cell files and writes the reports; other ranks return
    None. With `report_only` nothing is computed: the reports cover the finished cells (marked
    partial)."""
    config.validate()
    check_writable(config.out / "results.json")
    rank, world = rank_and_world()
    if rank != 0:
        progress = SILENT
    cells_dir = config.out / "cells"  # created by the first cell's write: a failed start leaves no folder
    runner = _Runner(loaded, config, device, progress)
    plan = config.plan()

    def cell_path(metric: str, allocation: str, ratio: float, seed: int) -> Path:
        return cells_dir / f"{cell_key(metric, allocation, ratio, seed)}.json"

    def finished(metric: str, allocation: str, ratio: float, seed: int) -> Cell | None:
        path = cell_path(metric, allocation, ratio, seed)
        key = runner.scratch_key if metric == SCRATCH else runner.settings_key
        return _load_cell(path, key) if path.exists() else None

    if not config.report_only:
        # the unfinished cells as rank 0 sees them, dealt round-robin: every rank gets a share even
        # when a resumed run's unfinished cells all sit at one rank's plan positions
        unfinished = agree_with_rank_zero([index for index, entry in enumerate(plan) if finished(*entry) is None])
        todo = [(index, plan[index]) for index in unfinished[rank::world]]
        spent: list[float] = []
        for done, (index, (metric, allocation, ratio, seed)) in enumerate(todo, start=1):
            started = time.perf_counter()
            cell = runner.run_cell(metric, allocation, ratio, seed)
            cell.seconds = round(time.perf_counter() - started, 2)
            cell.threads, cell.world_size, cell.rank = torch.get_num_threads(), world, rank
            spent.append(cell.seconds)
            write_text_atomic(cell_path(metric, allocation, ratio, seed), json.dumps(asdict(cell), sort_keys=True))
            remaining = len(todo) - done
            eta = sum(spent) / len(spent) * remaining
            progress.log(f"[{index + 1}/{len(plan)}] {cell.key}: top-1 {cell.top1_pruned:.2f}"
                         + (f" → {cell.top1_finetuned:.2f} after training" if cell.top1_finetuned is not None else "")
                         + f" ({cell.seconds:.0f} s; {remaining} cell(s) left, ETA {format_duration(eta)})")
    if rank != 0:
        return None
    found = {entry: finished(*entry) for entry in plan}
    if not config.report_only and world > 1:
        missing = [entry for entry, cell in found.items() if cell is None]
        if missing:
            progress.log(f"waiting for {len(missing)} cell(s) from the other ranks")
        while missing:
            time.sleep(POLL_SECONDS)
            for entry in list(missing):
                found[entry] = finished(*entry)
                if found[entry] is not None:
                    missing.remove(entry)
    cells = [cell for cell in found.values() if cell is not None]
    dense, dense_halves = runner.evaluate(loaded.model)
    dense_cost = count_cost(loaded.model, loaded.input_size, device)
    results = summarize(loaded, config, cells, dense.top1, dense_cost, dense_halves, planned=len(plan))
    timings = {cell.key: cell.seconds for cell in cells if cell.seconds is not None}
    write_outputs(config.out, results, cells, timings)
    if timings:
        # each cell's own thread and rank counts: the run that writes the reports may not be the one
        # that computed the cells (--report-only, or a resumed run with another world size)
        ran_with = {cell.key: {"threads": cell.threads, "world_size": cell.world_size, "rank": cell.rank}
                    for cell in cells if cell.threads is not None}  # set with seconds; older cells lack it
        write_text_atomic(config.out / "timings.json", json.dumps(
            {"cells": timings, "ran_with": ran_with}, indent=1, sort_keys=True))
    return results
