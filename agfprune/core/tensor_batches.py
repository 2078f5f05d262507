"""Training batches from images decoded once into a uint8 tensor, augmented in torch.

The PIL path (decode → pad → crop → flip → ToTensor → Normalize per image per step) costs more than
a small CIFAR network's forward and backward pass. Here each image is decoded once (resize +
centre crop to the model's input size, the deterministic part of the training transform), kept as
uint8 N×C×H×W, and every batch is padded (reflect), randomly cropped, flipped and normalised as
tensors. When the decoded set does not fit the memory budget, the same uint8 images are decoded per
batch instead: slower, but the batches (and so the results) are identical.

Only small inputs (≤ 64 px, CIFAR-like) use this path; larger ones keep timm's random-resized-crop
pipeline (`supports_tensor_batches`).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DEFAULT_MEMORY_FRACTION = 0.25  # of the memory available when decoding starts


def supports_tensor_batches(data_config: dict[str, Any]) -> bool:
    return int(data_config["input_size"][-1]) <= 64


def uint8_transform(data_config: dict[str, Any]) -> Any:
    """Resize + centre crop to the input size, as uint8 C×H×W (what `build_transform(train=True)`
    does before its random crop, flip and normalisation for small inputs)."""
    from torchvision import transforms as T

    size = int(data_config["input_size"][-1])
    return T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux; total physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class DecodedImages:
    """uint8 images N×C×H×W and int64 labels, either decoded up front or per request."""

    def __init__(self, dataset: Dataset, data_config: dict[str, Any], workers: int = 0,
                 memory_budget: int | None = None) -> None:
        self.dataset = dataset  # opened with `uint8_transform`
        self.workers = workers
        channels, height, width = (int(v) for v in data_config["input_size"])
        self.count = len(dataset)  # type: ignore[arg-type]
        self.nbytes = self.count * channels * height * width
        budget = memory_budget if memory_budget is not None else int(DEFAULT_MEMORY_FRACTION * available_memory())
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.in_memory = self.nbytes <= budget

    def _decode_all(self) -> None:
        from agfprune.core.data import build_loader

        loader = build_loader(self.dataset, workers=self.workers, batch_size=256, shuffle=False)
        images, labels = [], []
        for batch, targets in loader:
            images.append(batch)
            labels.append(torch.as_tensor(targets, dtype=torch.int64))
        self.images, self.labels = torch.cat(images), torch.cat(labels)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.in_memory:
            if self.images is None:
                self._decode_all()
            assert self.images is not None and self.labels is not None
            return self.images[indices], self.labels[indices]
        samples = [self.dataset[int(i)] for i in indices]
        return (torch.stack([image for image, _ in samples]),
                torch.tensor([int(label) for _, label in samples], dtype=torch.int64))


class AugmentedBatches:
    """One seeded pass (an epoch) after another over a seeded subset: shuffled, pad-crop + flip
    augmented and normalised in torch. Iterating yields (float images, labels) like a DataLoader."""

    def __init__(self, images: DecodedImages, data_config: dict[str, Any], batch_size: int, seed: int,
                 limit: int | None = None) -> None:
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        count = images.count
        # the same seeded subset as `subsample` picks for a DataLoader
        self.subset = (torch.randperm(count, generator=generator)[:limit].sort().values
                       if limit is not None and limit < count else torch.arange(count))
        self.generator = torch.Generator().manual_seed(seed * 7919 + 1)
        self.drop_last = len(self.subset) > batch_size
        size = int(data_config["input_size"][-1])
        self.pad = size // 8
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        full, rest = divmod(len(self.subset), self.batch_size)
        return full if self.drop_last else full + (1 if rest else 0)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Reflect-pad by size/8, crop back at a random offset, flip half, normalise."""
        count, _, height, width = images.shape
        padded = F.pad(images.float(), (self.pad,) * 4, mode="reflect") if self.pad else images.float()
        offsets = torch.randint(0, 2 * self.pad + 1, (2, count), generator=self.generator)
        flips = torch.rand(count, generator=self.generator) < 0.5
        rows = (offsets[0, :, None] + torch.arange(height))[:, None, :, None]
        columns = offsets[1, :, None] + torch.arange(width)
        columns = torch.where(flips[:, None], columns.flip(1), columns)[:, None, None, :]
        batch = torch.arange(count)[:, None, None, None]
        channels = torch.arange(images.shape[1])[None, :, None, None]
        cropped = padded[batch, channels, rows, columns]
        return (cropped - self.mean) / self.std

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.subset[torch.randperm(len(self.subset), generator=self.generator)]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            images, labels = self.images.batch(order[start:start + self.batch_size])
            yield self.augment(images), labels
