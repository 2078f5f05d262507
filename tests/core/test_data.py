"""Data sets: ImageFolder trees, .npz arrays, synthetic data, transforms, subsampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agfprune.core.data import (LoaderOptions, build_transform, data_config_overrides, make_loader,
                                open_dataset, subsample)
from agfprune.core.errors import DataError, UsageError
from agfprune.core.models.cifar_resnet import CIFAR_DATA_CONFIG
from agfprune.core.synthetic import make_synthetic


def test_synthetic_is_deterministic_and_balanced() -> None:
    images, labels = make_synthetic(500, seed=7)
    again, _ = make_synthetic(500, seed=7)
    assert images.shape == (500, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again)
    assert set(np.unique(labels)) == set(range(10))
    assert not np.array_equal(images, make_synthetic(500, seed=8)[0])


def test_npz_dataset_applies_model_transform(tiny_npz: Path) -> None:
    dataset = open_dataset(tiny_npz, "val", build_transform(CIFAR_DATA_CONFIG))
    image, label = dataset[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label < 10


def test_image_folder_picks_split(tiny_folder: Path) -> None:
    train = open_dataset(tiny_folder, "train")
    val = open_dataset(tiny_folder, "val")
    assert train.classes == ["class0", "class1", "class2"]
    assert len(train) == len(val) > 0
    direct = open_dataset(tiny_folder / "val", "val")
    assert len(direct) == len(val)


def test_empty_and_missing_data_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data not found"):
        open_dataset(tmp_path / "nope", "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(tmp_path / "empty", "val")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match="no images"):
        open_dataset(tmp_path / "empty", "val")


def test_bad_npz_is_clear(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", pixels=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="needs arrays 'images' and 'labels'"):
        open_dataset(tmp_path / "a.npz", "val")
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 4, 4, 3), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="must be uint8"):
        open_dataset(tmp_path / "b.npz", "val")
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        open_dataset(tmp_path / "c.npz", "val")


def test_subsample_is_seeded(tiny_npz: Path) -> None:
    dataset = open_dataset(tiny_npz, "val")
    first = subsample(dataset, 10, seed=1).indices
    assert first == subsample(dataset, 10, seed=1).indices
    assert first != subsample(dataset, 10, seed=2).indices
    assert len(first) == 10


def test_loader_batches_and_validates(tiny_npz: Path) -> None:
    dataset = open_dataset(tiny_npz, "val", build_transform(CIFAR_DATA_CONFIG))
    loader = make_loader(dataset, LoaderOptions(batch_size=16, limit=40))
    shapes = [images.shape[0] for images, _ in loader]
    assert shapes == [16, 16, 8]
    with pytest.raises(UsageError):
        make_loader(dataset, LoaderOptions(batch_size=0))


def test_overrides_change_transform(tiny_npz: Path) -> None:
    config = data_config_overrides(CIFAR_DATA_CONFIG, img_size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image, _ = open_dataset(tiny_npz, "val", build_transform(config))[0]
    assert image.shape == (3, 24, 24)
    with pytest.raises(UsageError):
        data_config_overrides(CIFAR_DATA_CONFIG, mean=(0.5,))


def test_train_transform_keeps_small_images_whole(tiny_npz: Path) -> None:
    transform = build_transform(CIFAR_DATA_CONFIG, train=True)
    image, _ = open_dataset(tiny_npz, "train", transform)[0]
    assert image.shape == (3, 32, 32)


def test_every_data_loader_is_built_in_one_place() -> None:
    # one builder (data.build_loader) decides workers and pinned memory for every loader in agfprune
    package = Path(__file__).resolve().parents[2] / "agfprune"
    building = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                      if "DataLoader(" in path.read_text())
    assert building == ["core/data.py"]


def test_a_shuffled_loader_draws_a_seeded_permutation() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(64), torch.zeros(64, dtype=torch.long))

    def order(seed: int, shuffle: bool = True) -> list[int]:
        loader = make_loader(dataset, LoaderOptions(batch_size=8, seed=seed, shuffle=shuffle))
        return [int(value) for batch, _ in loader for value in batch]

    assert order(0, shuffle=False) == list(range(64))
    assert sorted(order(0)) == list(range(64)) and order(0) != list(range(64))
    assert order(0) == order(0) and order(0) != order(1)
