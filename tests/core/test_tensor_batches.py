"""Tensor-augmented training batches: the same augmentation as the PIL pipeline, decoded once."""

from __future__ import annotations

import numpy as np
import torch

from agfprune.core.data import ArrayDataset, subsample
from agfprune.core.tensor_batches import AugmentedBatches, DecodedImages, uint8_transform

CONFIG = {"input_size": (3, 16, 16), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}


def _images(count: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 16, 16, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(count) % 10, uint8_transform(CONFIG))


def _reference_crops(image: torch.Tensor) -> list[torch.Tensor]:
    """Every pad-2 reflect crop of one image, flipped or not, normalised (torchvision's RandomCrop +
    RandomHorizontalFlip + ToTensor + Normalize could produce any of them)."""
    from torchvision.transforms import functional as TF

    mean, std = torch.tensor(CONFIG["mean"]).view(3, 1, 1), torch.tensor(CONFIG["std"]).view(3, 1, 1)
    padded = TF.pad(image, [2, 2, 2, 2], padding_mode="reflect")
    crops = []
    for top in range(5):
        for left in range(5):
            crop = padded[:, top:top + 16, left:left + 16].float() / 255
            for version in (crop, crop.flip(2)):
                crops.append((version - mean) / std)
    return crops


def test_batches_are_valid_augmentations_of_the_seeded_subset() -> None:
    dataset = _images()
    batches = AugmentedBatches(DecodedImages(dataset, CONFIG), CONFIG, batch_size=8, seed=5, limit=24)
    expected_subset = sorted(subsample(dataset, 24, 5).indices)
    assert sorted(batches.subset.tolist()) == expected_subset and len(batches) == 3
    seen, flipped = [], 0
    for images, labels in batches:
        assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
        for image, label in zip(images, labels):
            # find the source image by label-consistent brute force over the subset
            matches = [(index, k) for index in expected_subset if dataset.labels[index] == label
                       for k, crop in enumerate(_reference_crops(dataset[index][0]))
                       if torch.allclose(crop, image, atol=1e-5)]
            assert matches, "a batch image is no pad-crop/flip of any training image"
            seen.append(matches[0][0])
            flipped += matches[0][1] % 2
    assert sorted(seen) == expected_subset  # one pass = every subset image once
    assert 0 < flipped < 24


def test_in_memory_and_per_batch_decoding_give_identical_batches() -> None:
    dataset = _images()
    cached = AugmentedBatches(DecodedImages(dataset, CONFIG), CONFIG, 8, seed=1)
    streamed_images = DecodedImages(dataset, CONFIG, memory_budget=0)
    assert not streamed_images.in_memory
    streamed = AugmentedBatches(streamed_images, CONFIG, 8, seed=1)
    for epoch in range(2):  # later passes reshuffle and redraw crops, identically in both
        for (a, la), (b, lb) in zip(cached, streamed):
            assert torch.equal(a, b) and torch.equal(la, lb)
    first = [labels for _, labels in AugmentedBatches(DecodedImages(dataset, CONFIG), CONFIG, 8, seed=1)]
    second = [labels for _, labels in AugmentedBatches(DecodedImages(dataset, CONFIG), CONFIG, 8, seed=2)]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
