"""Random: seeded uniform scores, the baseline every other metric must beat."""

from __future__ import annotations

import zlib
from typing import Any

import torch

from agfprune.core.metrics import register_metric
from agfprune.core.metrics.base import LayerSlice, Metric, group_key


@register_metric("random")
class RandomMetric(Metric):
    """Uniform in [0, 1), seeded by (seed, group key): the same group gets the same scores in
    every run, whatever order the groups are visited in."""

    summary = "seeded uniform scores"
    default_normalizer = "none"  # uniform in [0, 1) everywhere: already comparable across groups

    def local_scores(self, item: LayerSlice) -> torch.Tensor | None:  # pragma: no cover - unused
        return None

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        seed = (self.seed * 1_000_003 + zlib.crc32(group_key(group).encode())) % (2**63 - 1)
        generator = torch.Generator().manual_seed(seed)
        scores = torch.rand(len(group[0].idxs), generator=generator, dtype=torch.float64)
        return self.normalize(scores).to(torch.float32)
