"""A small, learnable 10-class image data set generated in memory, for the demo and tests.

Each class is an oriented sinusoidal grating with its own orientation and spatial frequency,
tinted with its own colour, at a random phase, contrast and position. A weaker grating of another
(random) class is superimposed as a distractor, colours are jittered and Gaussian pixel noise is
added, so that a small CNN learns the classes in a minute but does not reach 100%: pruning and
routing then have accuracy to lose and to win back.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10


def make_synthetic(count: int, seed: int = 0, size: int = 32,
                   noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Return `count` images (uint8 NHWC, RGB) and labels (int64), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=count)
    angles = np.linspace(0.0, np.pi, NUM_CLASSES, endpoint=False)
    frequencies = np.array([1.5, 2.5, 3.5, 2.0, 3.0, 1.5, 2.5, 3.5, 2.0, 3.0])
    hues = np.linspace(0.0, 2 * np.pi, NUM_CLASSES, endpoint=False)
    colours = 0.5 + 0.5 * np.stack([np.cos(hues), np.cos(hues + 2.1), np.cos(hues + 4.2)], axis=1)
    grid = (np.arange(size) - size / 2) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    def grating(label: int, contrast: float) -> np.ndarray:
        angle = angles[label] + rng.normal(0.0, 0.1)
        shift = rng.uniform(-0.2, 0.2, size=2)
        coords = (xx - shift[0]) * np.cos(angle) + (yy - shift[1]) * np.sin(angle)
        wave = np.sin(4 * np.pi * frequencies[label] * coords + rng.uniform(0, 2 * np.pi))
        colour = np.clip(colours[label] + rng.normal(0.0, 0.15, size=3), 0.0, 1.0)
        return 0.5 * contrast * wave[..., None] * colour[None, None, :]

    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        contrast = rng.uniform(0.4, 1.0)
        distractor = (label + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES
        image = 0.5 + grating(label, contrast) + grating(distractor, contrast * rng.uniform(0.3, 0.8))
        image += rng.normal(0.0, noise, size=image.shape)
        images[index] = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)
