"""Finetuning data: per-sample seeded augmentation and a sampler that can start mid-epoch, so that a
resumed run sees exactly the samples and augmentations an uninterrupted one would."""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from agfprune.core.distributed import DistContext


class EpochSeededDataset(Dataset):
    """Runs each sample's transform under its own seed (seed, epoch, index), leaving the global
    Python/NumPy/torch random streams untouched, so augmentation does not depend on worker count,
    on rank, or on where a resumed run restarted."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % (2**63)
        with _isolated_rng(sample_seed):
            return self.dataset[index]


@contextlib.contextmanager
def _isolated_rng(seed: int) -> Iterator[None]:
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded permutation per epoch, one shard per rank) that can skip the
    first `skip` samples of its shard — the batches a resumed run already trained on."""

    def __init__(self, dataset: Dataset, context: DistContext, seed: int) -> None:
        super().__init__(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                         seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)
