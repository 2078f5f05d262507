"""How many channels each group loses: per-layer (the same ratio everywhere) or global.

Global pruning ranks the unit scores of all groups together and removes the lowest, but never more
than `cap` of one group's units and never its last one, so no layer vanishes. Loss-unit metrics
(AGF, Taylor, SNIP) are ranked as they are; others are first scaled per group by their normaliser.
Cost-aware ranking divides each unit's utility by the parameters or MACs removing it frees, so
that channels that are cheap to keep are not removed for almost nothing.
torch-pruning's own global mode has no such per-step cap; we compute the allocation here and hand
it to the pruner as per-layer ratios.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from agfprune.core.errors import UsageError
from agfprune.core.pruning.groups import ScoreTable
from agfprune.core.pruning.options import PruneOptions


def global_capacity(table: ScoreTable, cap: float, exclude: set[str] | None = None) -> tuple[int, int]:
    """(units that may go under the per-layer cap, all units) over the groups ranked together."""
    names = [name for name in table.scores if name not in (exclude or set())]
    units = [table.groups[name].units for name in names]
    removable = sum(max(0, min(count - 1, math.floor(count * cap + 1e-9))) for count in units)
    return removable, sum(units)


def global_allocation(table: ScoreTable, ratio: float, cap: float,
                      exclude: set[str] | None = None, cost: str | None = None) -> dict[str, int]:
    """Units to remove per group so that `ratio` of all units go, lowest scores first, capped;
    `cost` ("params"/"macs") ranks by score per unit of that cost instead."""
    exclude = exclude or set()
    names = [name for name in table.scores if name not in exclude]
    units = {name: table.groups[name].units for name in names}
    total = sum(units.values())
    wanted = total - int(total * (1.0 - ratio))
    limits = {name: max(0, min(units[name] - 1, math.floor(units[name] * cap + 1e-9))) for name in names}
    if not names:
        return {}
    per_group = []
    for name in names:
        values = table.unit_scores(name).double()
        if cost is not None:
            unit_cost = (table.groups[name].unit_cost or {}).get(cost)
            if not unit_cost:
                raise ValueError(f"group {name} has no {cost} cost recorded (ScoreTable.add_costs)")
            values = values / unit_cost
        per_group.append(values)
    scores = torch.cat(per_group)
    owners = torch.cat([torch.full((units[name],), index, dtype=torch.long) for index, name in enumerate(names)])
    order = torch.argsort(scores, stable=True)
    removed = {name: 0 for name in names}
    taken = 0
    for position in order.tolist():
        if taken >= wanted:
            break
        name = names[int(owners[position])]
        if removed[name] < limits[name]:
            removed[name] += 1
            taken += 1
    return removed


def ratio_for_count(removed: int, units: int) -> float:
    """The per-layer ratio r for which torch-pruning removes exactly `removed` of `units`
    (it removes units - int(units * (1 - r)))."""
    if removed <= 0:
        return 0.0
    return (removed - 0.5) / units


def local_allocation(table: ScoreTable, ratio: float, cap: float,
                     exclude: set[str] | None = None, cost: str | None = None) -> dict[str, int]:
    """Units to remove per group when every group loses `ratio` of its units (torch-pruning's
    rounding), capped at `cap` and never the last unit."""
    removed = {}
    for name, info in table.groups.items():
        if name in (exclude or set()):
            continue
        units = info.units
        wanted = units - int(units * (1.0 - ratio))
        removed[name] = max(0, min(wanted, units - 1, math.floor(units * cap + 1e-9)))
    return removed


def layer_ratios(table: ScoreTable, removed: dict[str, int], model: nn.Module) -> dict[nn.Module, float]:
    """{member layer: its group's final ratio}: `removed[name]` units of each group."""
    ratios: dict[nn.Module, float] = {}
    for name, count in removed.items():
        info = table.groups[name]
        ratio = ratio_for_count(count, info.units)
        for member in info.members:
            ratios[model.get_submodule(member)] = ratio
    return ratios


def allocate(table: ScoreTable, channel_ratio: float, options: PruneOptions) -> dict[str, int]:
    """Units each group loses at `channel_ratio` as `options` ask (per layer or global, heads excluded
    when --prune-heads removes them separately); UsageError when global caps cannot reach it."""
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
