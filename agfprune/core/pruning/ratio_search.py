"""--target params|macs: the channel ratio whose pruned model removes the asked fraction of the
parameters or MACs, found by bisection over trial prunes of copies of the dense model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from agfprune.core.errors import UsageError
from agfprune.core.evaluate import ModelCost, count_cost
from agfprune.core.progress import SILENT, Progress
from agfprune.core.pruning.allocation import allocate, layer_ratios
from agfprune.core.pruning.groups import ScoreTable
from agfprune.core.pruning.options import PruneOptions
from agfprune.core.pruning.pruner import build_pruner, prune_step


MAX_CHANNEL_RATIO = 0.99


def _prune_copy(dense: nn.Module, example: torch.Tensor, table: ScoreTable, options: PruneOptions,
                channel_ratio: float) -> nn.Module:
    """Prune a copy of `dense` in one step with fixed scores (for the ratio search)."""
    trial_options = copy.copy(options)
    trial_options.steps = 1
    model = copy.deepcopy(dense)
    ratios = layer_ratios(table, allocate(table, channel_ratio, trial_options), model)
    pruner, heads = build_pruner(model, example, trial_options, channel_ratio, ratios)
    prune_step(pruner, table, 1, 1, heads, options.head_ratio_for(channel_ratio), None)
    return model


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
