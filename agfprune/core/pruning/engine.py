"""prune_model: drive torch-pruning's dependency graph and pruner with agfprune's scores.

One step = score every group on the current model (a ScoreTable, from a `scorers.Scorer`), decide
how many channels each group loses (`allocation`; with --target params|macs the channel ratio comes
from `ratio_search`), let the pruner (`pruner`) remove the lowest-scored channels of every coupled
group, and fix up what torch-pruning does not know about (timm attention attributes, frozen
parameters). `steps > 1` re-scores (and re-estimates BatchNorm statistics) in between.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.errors import ModelError, UsageError
from agfprune.core.evaluate import ModelCost, count_cost
from agfprune.core.fingerprint import model_fingerprint
from agfprune.core.models.widths import sync_width_attributes
from agfprune.core.progress import SILENT, Progress
from agfprune.core.pruning.allocation import allocate, layer_ratios
from agfprune.core.pruning.options import PruneOptions
from agfprune.core.pruning.pruner import build_pruner, example_input_size, prune_step
from agfprune.core.pruning.ratio_search import search_channel_ratio
from agfprune.core.pruning.record import ChannelTracker, PruneRecord
from agfprune.core.pruning.scorers import MetricScorer, Scorer, StoredScorer  # noqa: F401 - re-exported


@dataclass
class PruneResult:
    """The pruned model (on the input's device, eval mode) and its record."""

    model: nn.Module
    record: PruneRecord

    @property
    def cost_before(self) -> ModelCost:
        return ModelCost(self.record.params_before, self.record.macs_before)

    @property
    def cost_after(self) -> ModelCost:
        return ModelCost(self.record.params_after, self.record.macs_after)


def _frozen_state(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def _restore_frozen(model: nn.Module, flags: dict[str, bool]) -> None:
    # torch-pruning rebuilds Parameters with requires_grad=True; frozen ones (option-A shortcut) stay frozen
    for name, parameter in model.named_parameters():
        if name in flags:
            parameter.requires_grad_(flags[name])


_COST_CACHE: dict[tuple, ModelCost] = {}


def _check_round_to(table: Any, options: PruneOptions) -> None:
    """--round-to K keeps multiples of K channels: a group of at most K channels keeps them all, so a K
    at least every group's width would silently prune nothing."""
    widths = [info.channels for info in table.groups.values()]
    if options.round_to and widths and max(widths) <= options.round_to:
        raise UsageError(f"--round-to {options.round_to}: the widest prunable group has {max(widths)} channels, "
                         "so rounding to that multiple would prune nothing; use a smaller value")


def _dense_cost(loaded: Any, size: tuple[int, ...], device: torch.device) -> ModelCost:
    """Params/MACs of the unpruned model; they depend on its structure only, so repeated pruning of
    the same model (ratio sweeps, metric comparisons) counts them once."""
    key = (loaded.arch, repr(sorted(loaded.timm_kwargs.items())), loaded.fingerprint,
           repr(loaded.metadata.get("structure")), size)
    if key not in _COST_CACHE:
        _COST_CACHE[key] = count_cost(loaded.model, size, device)
    return _COST_CACHE[key]


def prune_model(loaded: Any, scorer: Scorer, options: PruneOptions, *,
                input_size: tuple[int, ...] | None = None,
                reestimate_bn: Callable[[nn.Module], int] | None = None,
                calibration: dict[str, Any] | None = None, seed: int | None = None,
                progress: Progress = SILENT) -> PruneResult:
    """Prune a copy of `loaded.model` (a LoadedModel) as `options` ask; the input is left untouched.

    `reestimate_bn(model) -> batches` re-estimates BN statistics; it runs between steps and after
    the last one. The classifier is never pruned.
    """
    options.validate()
    started = time.perf_counter()
    dense = loaded.model
    device = next(dense.parameters()).device
    size = example_input_size(dense, tuple(input_size or loaded.input_size))
    example = torch.randn(1, *size, device=device)
    dense.eval()
    dense_cost = _dense_cost(loaded, size, device)
    model = copy.deepcopy(dense)
    frozen = _frozen_state(model)

    pruner, heads = build_pruner(model, example, options, options.ratio)  # lists and scores the groups
    progress.log(f"scoring {loaded.arch} with {scorer.name} (step 1/{options.steps})")
    table = scorer(model, pruner, 1)
    if options.cost_aware:
        table.add_costs(pruner, example)
    first_table = table
    _check_round_to(first_table, options)
    channel_ratio = options.ratio
    if options.target != "channels":
        progress.log(f"searching the channel ratio for -{100 * options.ratio:.1f}% {options.target}")
        channel_ratio = search_channel_ratio(dense, example, table, options, size, dense_cost, progress)
    ratios = layer_ratios(table, allocate(table, channel_ratio, options), model)
    pruner, heads = build_pruner(model, example, options, channel_ratio, ratios)
    tracker = ChannelTracker(pruner.DG)
    head_ratio = options.head_ratio_for(channel_ratio)
    batches_used = 0
    for step in range(1, options.steps + 1):
        if step > 1:
            if reestimate_bn is not None:
                reestimate_bn(model)
            progress.log(f"re-scoring with {scorer.name} (step {step}/{options.steps})")
            table = scorer(model, pruner, step)
            if options.cost_aware:
                table.add_costs(pruner, example)
        prune_step(pruner, table, step, options.steps, heads, head_ratio, tracker)
        progress.log(f"step {step}/{options.steps}: {sum(p.numel() for p in model.parameters()):,} params")
    _restore_frozen(model, frozen)
    sync_width_attributes(model, size)
    model.eval()
    if reestimate_bn is not None:
        batches_used = reestimate_bn(model)
    pruned_cost = count_cost(model, size, device)
    with torch.no_grad():
        if not torch.isfinite(model(example)).all():
            raise ModelError("the pruned model produces NaN/Inf on a random input")
    groups = {name: {"members": info.members, "channels": tracker.initial.get(name, info.channels),
                     "kept": tracker.kept(name)}
              for name, info in first_table.groups.items() if name in tracker.original}
    record = PruneRecord(
        metric=scorer.name, ratio=options.ratio, target=options.target, channel_ratio=round(channel_ratio, 6),
        global_pruning=options.global_pruning, max_layer_ratio=options.layer_cap, round_to=options.round_to,
        ignore=list(options.ignore), prune_heads=options.removes_heads, head_ratio=head_ratio, steps=options.steps,
        bn_recalibration_batches=batches_used, input_size=list(size),
        params_before=dense_cost.params, params_after=pruned_cost.params,
        macs_before=dense_cost.macs, macs_after=pruned_cost.macs,
        base_arch=loaded.arch, base_fingerprint=loaded.fingerprint or model_fingerprint(dense),
        seed=seed, calibration=dict(calibration or {}), groups=groups,
        wall_time_s=round(time.perf_counter() - started, 3), normalizer=options.normalizer,
        cost_aware=options.cost_aware,
    )
    return PruneResult(model=model, record=record)
