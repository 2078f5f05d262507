"""A small, learnable 10-class image data set generated in memory, for the demo and tests.

Each class is an oriented sinusoidal grating with its own orientation and spatial frequency,
tinted with its own colour, at a random phase, contrast and position, plus Gaussian pixel noise.
Classes differ in frequency, angle and colour, so a small CNN learns them within a minute, while
the noise and random phase keep the task from being trivial.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10


def make_synthetic(count: int, seed: int = 0, size: int = 32,
                   noise: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Return `count` images (uint8 NHWC, RGB) and labels (int64), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=count)
    angles = np.linspace(0.0, np.pi, NUM_CLASSES, endpoint=False)
    frequencies = np.array([1.5, 2.5, 3.5, 2.0, 3.0, 1.5, 2.5, 3.5, 2.0, 3.0])
    hues = np.linspace(0.0, 2 * np.pi, NUM_CLASSES, endpoint=False)
    colours = 0.5 + 0.5 * np.stack([np.cos(hues), np.cos(hues + 2.1), np.cos(hues + 4.2)], axis=1)
    grid = (np.arange(size) - size / 2) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        angle = angles[label] + rng.normal(0.0, 0.08)
        shift = rng.uniform(-0.15, 0.15, size=2)
        coords = (xx - shift[0]) * np.cos(angle) + (yy - shift[1]) * np.sin(angle)
        wave = np.sin(2 * np.pi * frequencies[label] * coords * 2 + rng.uniform(0, 2 * np.pi))
        contrast = rng.uniform(0.5, 1.0)
        image = 0.5 + 0.5 * contrast * wave[..., None] * colours[label][None, None, :]
        image += rng.normal(0.0, noise, size=image.shape)
        images[index] = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)
