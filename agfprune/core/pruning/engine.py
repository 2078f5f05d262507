"""prune_model: drive torch-pruning's dependency graph and pruner with agfprune's scores.

One step = score every group on the current model (a ScoreTable), decide how many channels each
group loses (per-layer ratio or global allocation), let the pruner remove the lowest-scored
channels of every coupled group, and fix up what torch-pruning does not know about (timm
attention attributes, frozen parameters). `steps > 1` re-scores (and re-estimates BatchNorm statistics) in between.
"""

from __future__ import annotations

import copy
import fnmatch
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch_pruning as tp

from agfprune.core.errors import ModelError, UsageError, first_line
from agfprune.core.evaluate import ModelCost, count_cost
from agfprune.core.fingerprint import model_fingerprint
from agfprune.core.models.widths import sync_width_attributes
from agfprune.core.progress import SILENT, Progress
from agfprune.core.pruning import vit
from agfprune.core.pruning.allocation import global_allocation, global_capacity, local_allocation, ratio_for_count
from agfprune.core.pruning.groups import ScoreTable, classifier_modules, score_groups, table_from_named_scores
from agfprune.core.pruning.options import PruneOptions
from agfprune.core.pruning.record import ChannelTracker, PruneRecord

MAX_CHANNEL_RATIO = 0.99


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


def ignored_modules(model: nn.Module, patterns: list[str]) -> list[nn.Module]:
    """Classifier plus every module whose name matches one of the --ignore glob patterns."""
    ignored = classifier_modules(model)
    names = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            example = ", ".join(names[:4])
            raise UsageError(f"--ignore {pattern!r} matches no module (names look like: {example}, ...)")
        ignored.extend(model.get_submodule(name) for name in matched)
    return ignored


def example_input_size(model: nn.Module, fallback: tuple[int, ...]) -> tuple[int, ...]:
    """The input size a model was built for (timm ViTs fix theirs at construction)."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and not getattr(patch_embed, "dynamic_img_size", False):
        size = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        return (fallback[0], int(size[0]), int(size[1]))
    return tuple(fallback)


def build_pruner(model: nn.Module, example: torch.Tensor, options: PruneOptions, channel_ratio: float,
                 layer_ratios: dict[nn.Module, float] | None = None) -> tuple[tp.pruner.BasePruner, dict[nn.Module, int]]:
    """A torch-pruning pruner on `model`. How many channels each group loses comes from the scores:
    `layer_ratios` (see `layer_ratios`) gives every member of a group its group's ratio through
    torch-pruning's `pruning_ratio_dict`; without it (a pruner that only lists and scores groups)
    every group gets `channel_ratio`."""
    ignored = ignored_modules(model, options.ignore)
    heads = vit.head_counts(model, ignored)
    if options.removes_heads and not heads:
        raise UsageError("--prune-heads/--head-ratio: this model has no prunable attention heads "
                         "(timm-style attention with a fused qkv layer); drop the option")
    try:
        with warnings.catch_warnings():
            # cls_token/pos_embed/layer-scale gammas: pruning their last dimension is what we want
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            pruner = _make_pruner(model, example, options, channel_ratio, ignored, heads, layer_ratios)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise ModelError(f"cannot trace the model's dependency graph ({first_line(exc)})") from None
    return pruner, heads


def _make_pruner(model: nn.Module, example: torch.Tensor, options: PruneOptions, channel_ratio: float,
                 ignored: list[nn.Module], heads: dict[nn.Module, int],
                 layer_ratios: dict[nn.Module, float] | None) -> tp.pruner.BasePruner:
    # the placeholder importance is replaced by a ScoreTable before every step
    return tp.pruner.BasePruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=channel_ratio, max_pruning_ratio=1.0, iterative_steps=options.steps,
        # one module per key: each gets its own ranking scope; a group is ranked in its members' scope
        pruning_ratio_dict=dict(layer_ratios or {}),
        ignored_layers=ignored, round_to=options.round_to,
        # fresh dicts: torch-pruning mutates these and its defaults are shared between instances
        in_channel_groups={}, out_channel_groups={}, num_heads=dict(heads),
        prune_num_heads=options.removes_heads and bool(heads), prune_head_dims=not options.removes_heads,
        head_pruning_ratio=options.head_ratio_for(channel_ratio) or 0.0,
    )


def layer_ratios(table: ScoreTable, removed: dict[str, int], model: nn.Module) -> dict[nn.Module, float]:
    """{member layer: its group's final ratio}: `removed[name]` units of each group."""
    ratios: dict[nn.Module, float] = {}
    for name, count in removed.items():
        info = table.groups[name]
        ratio = ratio_for_count(count, info.units)
        for member in info.members:
            ratios[model.get_submodule(member)] = ratio
    return ratios


def _prune_step(pruner: tp.pruner.BasePruner, table: ScoreTable, step: int, steps: int,
                heads: dict[nn.Module, int], head_ratio: float | None, tracker: ChannelTracker | None) -> None:
    pruner.importance = table.for_graph(pruner.DG)
    if heads and head_ratio is not None:
        vit.set_head_step_ratio(pruner, heads, head_ratio, step, steps)
    for group in pruner.step(interactive=True):  # the pruner counts its steps: this is step `step`
        if tracker is not None:
            tracker.apply(pruner.DG, group)
        group.prune()
    vit.sync_attention(pruner.model, pruner.num_heads)


def _frozen_state(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def _restore_frozen(model: nn.Module, flags: dict[str, bool]) -> None:
    # torch-pruning rebuilds Parameters with requires_grad=True; frozen ones (option-A shortcut) stay frozen
    for name, parameter in model.named_parameters():
        if name in flags:
            parameter.requires_grad_(flags[name])


def _prune_copy(dense: nn.Module, example: torch.Tensor, table: ScoreTable, options: PruneOptions,
                channel_ratio: float) -> nn.Module:
    """Prune a copy of `dense` in one step with fixed scores (for the ratio search)."""
    trial_options = copy.copy(options)
    trial_options.steps = 1
    model = copy.deepcopy(dense)
    ratios = layer_ratios(table, _allocation(table, channel_ratio, trial_options), model)
    pruner, heads = build_pruner(model, example, trial_options, channel_ratio, ratios)
    _prune_step(pruner, table, 1, 1, heads, options.head_ratio_for(channel_ratio), None)
    return model


def _allocation(table: ScoreTable, channel_ratio: float, options: PruneOptions) -> dict[str, int]:
    exclude = set()
    if options.removes_heads:
        exclude = {name for name, info in table.groups.items() if info.channel_groups > 1
                   and any(m.endswith(".qkv") for m in info.members)}
    if not options.global_pruning:
        return local_allocation(table, channel_ratio, options.layer_cap, exclude)
    if options.target == "channels":
        removable, total = global_capacity(table, options.layer_cap, exclude)
        if total - int(total * (1.0 - channel_ratio)) > removable:
            raise UsageError(f"--ratio {channel_ratio} --global: at most {removable} of {total} channels "
                             f"({100 * removable / max(1, total):.1f}%) can go while every layer keeps at least "
                             f"{100 * (1 - options.layer_cap):.0f}% of its channels (--max-layer-ratio "
                             f"{options.layer_cap}) and one channel")
    cost = options.target if options.cost_aware else None
    return global_allocation(table, channel_ratio, options.layer_cap, exclude, cost)


def _reduction(cost: ModelCost, dense: ModelCost, target: str) -> float:
    return 1.0 - (cost.params / dense.params if target == "params" else cost.macs / dense.macs)


def search_channel_ratio(dense: nn.Module, example: torch.Tensor, table: ScoreTable, options: PruneOptions,
                         input_size: tuple[int, ...], dense_cost: ModelCost,
                         progress: Progress = SILENT) -> float:
    """Bisect the channel ratio until the params/MACs reduction is within tolerance of the target."""
    device = example.device

    def reduction_at(channel_ratio: float) -> float:
        model = _prune_copy(dense, example, table, options, channel_ratio)
        value = _reduction(count_cost(model, input_size, device), dense_cost, options.target)
        progress.log(f"  channel ratio {channel_ratio:.4f} -> {options.target} -{100 * value:.2f}%")
        return value

    wanted, tolerance = options.ratio, options.tolerance
    high = MAX_CHANNEL_RATIO if options.global_pruning else min(MAX_CHANNEL_RATIO, options.layer_cap)
    best_ratio, best_gap, best_value = high, float("inf"), 0.0
    top = reduction_at(high)
    if top < wanted - tolerance:
        raise UsageError(f"--ratio {wanted} --target {options.target}: unreachable; removing {100 * high:.0f}% "
                         f"of every group's channels saves only {100 * top:.1f}% of the {options.target} "
                         "(the classifier, ignored layers and layer caps are kept)")
    low = 0.0
    # params and MACs fall roughly with the square of the kept width: a good first guess
    guess = min(high, max(1e-3, 1.0 - (1.0 - wanted) ** 0.5))
    for _ in range(24):
        value = reduction_at(guess)
        gap = abs(value - wanted)
        if gap < best_gap:
            best_ratio, best_gap, best_value = guess, gap, value
        if gap <= tolerance:
            return guess
        if value < wanted:
            low = guess
        else:
            high = guess
        if high - low < 1e-4:
            break
        guess = (low + high) / 2
    raise UsageError(f"--ratio {wanted} --target {options.target}: the closest reachable reduction is "
                     f"{100 * best_value:.1f}% (channel ratio {best_ratio:.4f}); channel counts are whole numbers, "
                     "try without --round-to or a different --ratio")


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
    ratios = layer_ratios(table, _allocation(table, channel_ratio, options), model)
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
        _prune_step(pruner, table, step, options.steps, heads, head_ratio, tracker)
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
