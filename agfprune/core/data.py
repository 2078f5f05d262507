"""Data sets and loaders: ImageFolder trees, .npz arrays and the synthetic demo set.

Transforms come from the model's timm data config; nothing here knows about models beyond it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from agfprune.core.errors import DataError, UsageError, first_line
from agfprune.core.formats import require_regular_file

MAX_CLASSES = 100_000  # more than any public classification data set (ImageNet-21k has 21,843)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "test")}


class ArrayDataset(Dataset):
    """uint8 NHWC images with integer labels, served as PIL images through a transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None,
                 classes: list[str] | None = None) -> None:
        self.images = images
        self.labels = labels.astype(np.int64)
        self.transform = transform
        self.classes = classes or [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def load_npz(path: Path, transform: Callable | None = None) -> ArrayDataset:
    """An .npz with `images` (uint8, N×H×W×3 or N×H×W) and `labels` (N integers)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive or "labels" not in archive:
                raise DataError(f"{path}: .npz needs arrays 'images' and 'labels' "
                                f"(found {', '.join(archive.files) or 'none'})")
            images, labels = archive["images"], archive["labels"]
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"{path}: 'images' must be uint8 N×H×W×C with C in (1, 3), "
                        f"got {images.dtype} {images.shape}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if len(images) == 0:
        raise DataError(f"{path}: contains no images")
    # before anything is sized by the largest label (the class list, a one-hot...), and before the
    # int64 cast that would wrap uint64 labels ≥ 2^63 to negative ones
    if labels.min() < 0 or labels.max() >= MAX_CLASSES:
        raise DataError(f"{path}: labels must be class indices in [0, {MAX_CLASSES}), found "
                        f"{int(labels.min())}..{int(labels.max())}")
    return ArrayDataset(images, labels, transform)


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def resolve_image_root(path: Path, split: str) -> Path:
    """A root with class folders, or with train/val subfolders (then `split` picks one)."""
    for name in SPLIT_NAMES.get(split, (split,)):
        candidate = path / name
        if candidate.is_dir():
            return candidate
    return path


def read_image(path: str) -> Image.Image:
    """Decode one image file completely as RGB; DataError naming the file when it cannot be.

    Non-regular files (a named pipe would block open() forever), dangling symlinks, empty, truncated or
    foreign files, and decompression bombs (PIL's pixel limit, which only warns below twice the
    limit: here that is an error too) all end up here."""
    import warnings

    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: not a regular file (a named pipe, device or socket), not an image")
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
            return image.convert("RGB")
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            MemoryError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc, 120)
        raise DataError(f"{path}: not a readable image ({detail}); remove it or pass --skip-bad-images") from None


def _walk_images(class_dir: str) -> Iterator[str]:
    """Image paths under one class folder, following symlinked folders but each real folder once, so
    that a symlink loop does not turn 6 images into 126."""
    seen: set[tuple[int, int]] = set()
    pending = [class_dir]
    while pending:
        folder = pending.pop()
        try:
            info = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue  # a dangling or looping folder link: nothing in it to read
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if is_folder:
                pending.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                yield entry.path


class ImageFolderSet(Dataset):
    """An ImageFolder tree: one folder per class (sorted names), images found loop-safely, decoded by
    `read_image`. With `skip_bad_images`, every file is decoded once up front and unreadable ones are
    left out and counted (`skipped`) instead of stopping the command."""

    def __init__(self, root: Path, transform: Callable | None = None, skip_bad_images: bool = False) -> None:
        self.root = root
        self.transform = transform
        self.loader = read_image  # cache_decoded() wraps this
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.samples = [(path, index) for name, index in self.class_to_idx.items()
                        for path in sorted(_walk_images(os.path.join(root, name)))]
        self.skipped: list[str] = []
        if skip_bad_images:
            readable = []
            for path, index in self.samples:
                try:
                    read_image(path)
                    readable.append((path, index))
                except DataError:
                    self.skipped.append(path)
            self.samples = readable
        self.targets = [index for _, index in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = self.loader(path)
        return (self.transform(image) if self.transform else image), target


def load_image_folder(path: Path, split: str, transform: Callable | None = None,
                      skip_bad_images: bool = False) -> Dataset:
    root = resolve_image_root(path, split)
    class_dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not class_dirs:
        hint = " (images must sit in one folder per class)" if _has_images(root) else ""
        raise DataError(f"{root}: no class folders found{hint}")
    dataset = ImageFolderSet(root, transform, skip_bad_images)
    empty = [name for index, name in enumerate(dataset.classes) if index not in set(dataset.targets)]
    if empty:
        raise DataError(f"{root}: no images found in class folder(s) {', '.join(empty[:5])} "
                        f"(supported: {', '.join(IMAGE_SUFFIXES)})")
    return dataset


def open_dataset(path: str | Path, split: str = "val", transform: Callable | None = None,
                 skip_bad_images: bool = False) -> Dataset:
    """Open a data set from an ImageFolder tree or an .npz file; `split` picks train/ or val/.
    `skip_bad_images` leaves out (and counts, in `.skipped`) image files that cannot be decoded."""
    from agfprune.core.synthetic import make_synthetic

    text = str(path)
    if text.startswith("synthetic:"):
        count = _parse_synthetic(text)
        images, labels = make_synthetic(count, seed=0 if split == "train" else 1)
        return ArrayDataset(images, labels, transform)
    path = Path(path)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    if not path.is_dir():
        if path.suffix != ".npz":
            raise DataError(f"{path}: expected an ImageFolder directory or an .npz file")
        return load_npz(require_regular_file(path, ".npz data file", DataError), transform)
    return load_image_folder(path, split, transform, skip_bad_images)


def count_images(path: str | Path, split: str) -> int:
    """How many images `open_dataset(path, split)` gives, without decoding any (synthetic: none made)."""
    if str(path).startswith("synthetic:"):
        return _parse_synthetic(str(path))
    return len(open_dataset(path, split))  # type: ignore[arg-type]


def check_enough_batches(path: str | Path, split: str, batches: int, batch_size: int, limit: int | None, *,
                         batches_option: str = "--calib-batches", size_option: str = "--calib-batch-size") -> int:
    """Refuse, before any model is loaded, a request for more batches than the data holds."""
    count = count_images(path, split)
    usable = count if limit is None else min(count, limit)
    available = -(-usable // batch_size)
    if available < batches:
        limited = f" (--limit {limit})" if limit is not None and limit < count else ""
        raise DataError(f"{batches_option} {batches} × {size_option} {batch_size} needs {batches * batch_size} "
                         f"images, but --data {path} ({split}) has {usable}{limited}, i.e. {available} batch(es); "
                         f"lower {batches_option} or {size_option}, or give more data")
    return usable


def _parse_synthetic(text: str) -> int:
    try:
        count = int(text.split(":", 1)[1])
    except ValueError:
        raise DataError(f"{text}: expected synthetic:COUNT, e.g. synthetic:2000") from None
    if count <= 0:
        raise DataError(f"{text}: COUNT must be positive")
    return count


def build_transform(data_config: dict[str, Any], train: bool = False) -> Callable:
    """timm's eval transform for the config; for training, timm's augmentation, except that
    small inputs (≤64 px, CIFAR-like) get the conventional pad-crop + flip instead of a random
    resized crop that would destroy 32 px images."""
    from timm.data import create_transform
    from torchvision import transforms as T

    config = {k: v for k, v in data_config.items()
              if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}
    size = int(config["input_size"][-1])
    if train and size <= 64:
        return T.Compose([
            T.Resize(size), T.CenterCrop(size),
            T.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
            T.RandomHorizontalFlip(),
            T.ToTensor(), T.Normalize(config["mean"], config["std"]),
        ])
    return create_transform(**config, is_training=train)


@dataclass
class DataOverrides:
    """--img-size/--mean/--std as given (None: keep the model's own data config)."""

    img_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def validate(self) -> None:
        """Checks that need no model (the channel count is checked in apply)."""
        if self.img_size is not None and self.img_size <= 0:
            raise UsageError(f"--img-size {self.img_size}: must be positive")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise UsageError("--std values must be positive")

    def apply(self, config: dict[str, Any]) -> dict[str, Any]:
        return data_config_overrides(config, self.img_size, self.mean, self.std)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.img_size, self.mean, self.std))


def calibrated_data_config(base: dict[str, Any], recorded: dict[str, Any] | None,
                           overrides: DataOverrides | None) -> dict[str, Any]:
    """The model's data config, then the input size and normalisation a calibration file records (its
    statistics were computed on those inputs), then --img-size/--mean/--std: the last one given wins."""
    config = dict(base)
    for key in ("input_size", "mean", "std"):
        if isinstance((recorded or {}).get(key), (list, tuple)):
            config[key] = tuple(recorded[key])  # type: ignore[index]
    return overrides.apply(config) if overrides else config


def data_config_overrides(base: dict[str, Any], img_size: int | None = None,
                          mean: tuple[float, ...] | None = None,
                          std: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Apply --img-size/--mean/--std to a data config, validating lengths and ranges."""
    config = dict(base)
    if img_size is not None:
        if img_size <= 0:
            raise UsageError(f"--img-size {img_size}: must be positive")
        config["input_size"] = (config["input_size"][0], img_size, img_size)
    for name, value in (("mean", mean), ("std", std)):
        if value is not None:
            if len(value) != config["input_size"][0]:
                raise UsageError(f"--{name}: expected {config['input_size'][0]} values, got {len(value)}")
            if name == "std" and any(v <= 0 for v in value):
                raise UsageError("--std values must be positive")
            config[name] = tuple(float(v) for v in value)
    return config


def subsample(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of `limit` items (the whole set when limit is None or larger)."""
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    if limit <= 0:
        raise UsageError(f"--limit {limit}: must be positive")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:limit].sort().values  # type: ignore[arg-type]
    return Subset(dataset, indices.tolist())


@dataclass
class LoaderOptions:
    """How to batch a data set; shared by every command that reads images."""

    batch_size: int = 128
    workers: int = 0
    limit: int | None = None
    seed: int = 0
    shuffle: bool = False
    drop_last: bool = False
    skip_bad_images: bool = False  # read by whoever opens the data set (open_dataset)

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size {self.batch_size}: must be positive")
        if self.workers < 0:
            raise UsageError(f"--workers {self.workers}: must be ≥ 0")


def build_loader(dataset: Dataset, *, workers: int = 0, device: torch.device | None = None,
                 **arguments: Any) -> DataLoader:
    """The one place a DataLoader is built (every loader in agfprune comes from here): `workers`
    processes, memory pinned when the batches go to a CUDA device; `arguments` are DataLoader's own
    (batch_size, shuffle, sampler or batch_sampler, drop_last, generator)."""
    return DataLoader(dataset, num_workers=workers, pin_memory=bool(device is not None and device.type == "cuda"),
                      persistent_workers=False, **arguments)


def make_loader(dataset: Dataset, options: LoaderOptions, device: torch.device | None = None) -> DataLoader:
    """A DataLoader over a seeded subset; shuffling (if asked) is seeded too."""
    options.validate()
    dataset = subsample(dataset, options.limit, options.seed)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the data set is empty")
    generator = torch.Generator().manual_seed(options.seed)
    return build_loader(dataset, workers=options.workers, device=device, batch_size=options.batch_size,
                        shuffle=options.shuffle, generator=generator,
                        drop_last=options.drop_last and len(dataset) > options.batch_size)  # type: ignore[arg-type]


class SeededBatches(Sampler[list[int]]):
    """Calibration batches: batch i holds items perm[i*B:(i+1)*B] of a seeded permutation of the data
    set (the last one may be short). Rank r of a W-process job gets batches r, r+W, r+2W, …, so that
    the ranks together see exactly the batches one process would, and nobody decodes the others'."""

    def __init__(self, length: int, batch_size: int, batches: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.length, self.batch_size, self.seed = length, batch_size, seed
        available = -(-length // batch_size)  # ceil: every image in some batch
        self.owned = list(range(rank, min(batches, available), world_size))

    def __len__(self) -> int:
        return len(self.owned)

    def __iter__(self):
        permutation = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed)).tolist()
        for index in self.owned:
            yield permutation[index * self.batch_size:(index + 1) * self.batch_size]


def calibration_loader(dataset: Dataset, *, batch_size: int, batches: int, seed: int, workers: int = 0,
                       rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> DataLoader:
    """A DataLoader over this rank's share of `batches` seeded batches (see SeededBatches)."""
    LoaderOptions(batch_size=batch_size, workers=workers).validate()
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the data set is empty")
    sampler = SeededBatches(len(dataset), batch_size, batches, seed, rank, world_size)  # type: ignore[arg-type]
    return build_loader(dataset, workers=workers, device=device, batch_sampler=sampler)


def skipped_images(dataset: Dataset) -> list[str]:
    """Image files left out as unreadable (open_dataset(..., skip_bad_images=True))."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return list(getattr(dataset, "skipped", []))


def dataset_classes(dataset: Dataset) -> int:
    """Number of classes a data set declares (0 when it cannot tell)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes else 0


SPLIT_HALVES = ("first", "second", "none")


def check_split_half(half: str) -> None:
    """Validate a --split-half value (callers check it before loading models)."""
    if half not in SPLIT_HALVES:
        raise UsageError(f"--split-half {half!r}: expected one of {', '.join(SPLIT_HALVES)}")


def split_half(dataset: Dataset, half: str, seed: int = 0) -> Dataset:
    """One of two disjoint halves of a data set (a seeded permutation, first or second half of it),
    or the whole set for "none"; the same (half, seed) always gives the same images, so that a
    threshold tuned on one half can be reported on the other."""
    check_split_half(half)
    if half == "none":
        return dataset
    return Subset(dataset, half_indices(len(dataset), half, seed))  # type: ignore[arg-type]


def half_indices(count: int, half: str, seed: int = 0) -> list[int]:
    """Sorted positions of one seeded half of `count` items (what `split_half` keeps)."""
    if count < 2:
        raise DataError(f"cannot split a data set of {count} image(s) into halves")
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    chosen = permutation[: count // 2] if half == "first" else permutation[count // 2:]
    return chosen.sort().values.tolist()


def cache_decoded(dataset: Dataset) -> Dataset:
    """Keep decoded images in memory, so that repeated passes (many pruned variants evaluated on
    one split) decode each file once; transforms still run per access, so augmentation stays random.

    Works on ImageFolder-like sets (a `loader` attribute); others are returned unchanged.
    """
    import functools

    inner = dataset
    while isinstance(inner, Subset):
        inner = inner.dataset
    loader = getattr(inner, "loader", None)
    if loader is not None and not hasattr(loader, "cache_info"):
        inner.loader = functools.lru_cache(maxsize=None)(loader)  # type: ignore[attr-defined]
    return dataset
