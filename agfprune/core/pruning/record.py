"""The pruning record: which original channels survive, and what the pruning cost and saved.

Kept indices are in the dense model's numbering, so that a record can be checked against (or
replayed on) the base model no matter how many pruning steps produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch_pruning as tp


class ChannelTracker:
    """Maps every layer's current output channels back to the dense model's indices."""

    def __init__(self, graph: tp.DependencyGraph) -> None:
        self.original: dict[str, list[int]] = {}
        self.initial: dict[str, int] = {}
        self._names = {module: name for name, module in graph.model.named_modules()}
        for module, name in self._names.items():
            if module not in graph.module2node:
                continue
            pruner = graph.get_pruner_of_module(module)
            channels = pruner.get_out_channels(module) if pruner is not None else None
            if isinstance(channels, int) and channels > 0:
                self.original[name] = list(range(channels))
                self.initial[name] = channels

    def apply(self, graph: tp.DependencyGraph, group) -> None:
        """Record a group that is about to be pruned (indices are in the current numbering)."""
        removed: dict[str, set[int]] = {}
        for dep, idxs in group:
            if dep.target.type == tp.ops.OPTYPE.PARAMETER or not graph.is_out_channel_pruning_fn(dep.handler):
                continue
            name = self._names.get(dep.target.module)
            if name in self.original:
                removed.setdefault(name, set()).update(int(i) for i in idxs)
        for name, positions in removed.items():
            current = self.original[name]
            self.original[name] = [index for position, index in enumerate(current) if position not in positions]

    def kept(self, name: str) -> list[int]:
        return list(self.original[name])


@dataclass
class PruneRecord:
    """Everything needed to understand and audit one pruning run (stored in the checkpoint)."""

    metric: str
    ratio: float
    target: str
    channel_ratio: float
    global_pruning: bool
    max_layer_ratio: float
    round_to: int | None
    ignore: list[str]
    prune_heads: bool
    steps: int
    bn_recalibration_batches: int
    input_size: list[int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    base_arch: str
    base_fingerprint: str
    seed: int | None = None
    head_ratio: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_time_s: float = 0.0
    normalizer: str | None = None  # None: the metric's default
    cost_aware: bool = False

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["params_reduction"] = round(self.params_reduction, 6)
        data["macs_reduction"] = round(self.macs_reduction, 6)
        return data

    def summary(self) -> dict[str, Any]:
        """The record without per-group indices (for printing)."""
        data = self.as_dict()
        data.pop("groups")
        data["groups_pruned"] = sum(1 for g in self.groups.values() if len(g["kept"]) < g["channels"])
        return data
