"""What the user asked the pruner to do, validated once, before any expensive work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agfprune.core.errors import UsageError

TARGETS = ("channels", "params", "macs")
DEFAULT_GLOBAL_MAX_LAYER_RATIO = 0.9


@dataclass
class PruneOptions:
    """Ratio semantics (see docs/pruning.md).

    target="channels": `ratio` is the fraction of channels removed from every prunable group
    (torch-pruning's pruning ratio); "params"/"macs": the fraction of the model's parameters or
    MACs to remove, reached by searching the channel ratio until within `tolerance`.
    """

    ratio: float
    target: str = "channels"
    global_pruning: bool = False
    max_layer_ratio: float | None = None
    round_to: int | None = None
    ignore: list[str] = field(default_factory=list)
    prune_heads: bool = False
    head_ratio: float | None = None  # fraction of each attention's heads to remove; implies prune_heads
    steps: int = 1
    tolerance: float = 0.01
    normalizer: str | None = None  # per-group score scaling; None = the metric's default
    cost_aware: bool = False       # global ranking by utility per parameter/MAC a unit frees

    def validate(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise UsageError(f"--ratio {self.ratio}: must be strictly between 0 and 1 "
                             "(the fraction of channels, params or MACs to remove)")
        if self.target not in TARGETS:
            raise UsageError(f"--target {self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.max_layer_ratio is not None and not 0.0 < self.max_layer_ratio <= 1.0:
            raise UsageError(f"--max-layer-ratio {self.max_layer_ratio}: must be in (0, 1]")
        if (self.target == "channels" and not self.global_pruning and self.max_layer_ratio is not None
                and self.max_layer_ratio < self.ratio):
            raise UsageError(f"--max-layer-ratio {self.max_layer_ratio} is below --ratio {self.ratio}: "
                             "with per-layer pruning every layer loses exactly --ratio of its channels")
        if self.round_to is not None and self.round_to < 1:
            raise UsageError(f"--round-to {self.round_to}: must be a positive channel multiple")
        if self.head_ratio is not None and not 0.0 <= self.head_ratio < 1.0:
            raise UsageError(f"--head-ratio {self.head_ratio}: must be in [0, 1) (the fraction of each "
                             "attention's heads to remove; at least one head is always kept)")
        if self.steps < 1:
            raise UsageError(f"--steps {self.steps}: must be at least 1")
        if self.normalizer is not None:
            from agfprune.core.metrics.base import NORMALIZERS

            if self.normalizer not in NORMALIZERS:
                raise UsageError(f"--normalizer {self.normalizer!r}: expected one of {', '.join(NORMALIZERS)}")
        if self.cost_aware and self.target not in ("params", "macs"):
            raise UsageError("--cost-aware ranks channels by utility per parameter or MAC they free: it needs "
                             "--target params or --target macs")
        if self.cost_aware and not self.global_pruning:
            raise UsageError("--cost-aware changes how groups are compared with each other: it needs --global")
        if not 0.0 < self.tolerance < 0.5:
            raise UsageError(f"tolerance {self.tolerance}: must be in (0, 0.5)")

    @property
    def removes_heads(self) -> bool:
        """Whole heads go (--prune-heads or --head-ratio) instead of dimensions within each head."""
        return self.prune_heads or self.head_ratio is not None

    def head_ratio_for(self, channel_ratio: float) -> float | None:
        """Fraction of heads each attention loses: --head-ratio, else the channel ratio with
        --prune-heads; None when heads are kept whole-number-wise (head dimensions shrink instead)."""
        if self.head_ratio is not None:
            return self.head_ratio
        return channel_ratio if self.prune_heads else None

    @property
    def layer_cap(self) -> float:
        """Largest fraction of one group's channels that may go (so that no layer vanishes)."""
        if self.max_layer_ratio is not None:
            return self.max_layer_ratio
        return DEFAULT_GLOBAL_MAX_LAYER_RATIO if self.global_pruning else 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
