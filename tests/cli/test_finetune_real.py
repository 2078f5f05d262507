"""Real data: ResNet-20 (JPEG CIFAR-10) pruned to half its channels recovers accuracy in a short
finetune. Accuracy is measured here independently (PIL + NumPy preprocessing, plain argmax) on a
fixed 500-image val subset, before and after, and the finetune log must report the same numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import JPEG_TRAIN, JPEG_VAL, RESNET20_JPEG, needs_shared

PER_CLASS = 50  # 10 classes x 50 = the fixed 500-image val subset


def _val_subset(root: Path) -> list[tuple[Path, int]]:
    """The first 50 images of each class, linked into root/val/<class>/ (an ImageFolder split)."""
    items = []
    for label, folder in enumerate(sorted(p for p in JPEG_VAL.iterdir() if p.is_dir())):
        target = root / "val" / folder.name
        target.mkdir(parents=True)
        for image in sorted(folder.iterdir())[:PER_CLASS]:
            os.symlink(image, target / image.name)
            items.append((image, label))
    return items


@torch.no_grad()
def _top1(checkpoint: Path, items: list[tuple[Path, int]]) -> float:
    """Top-1 (%) with preprocessing written out by hand: x/255, ImageNet mean/std, 32 px, no resize."""
    from PIL import Image

    from agfprune.core.models import load_model

    loaded = load_model(checkpoint=checkpoint)
    assert tuple(loaded.data_config["input_size"]) == (3, 32, 32)
    mean = np.array(loaded.data_config["mean"], dtype=np.float32)
    std = np.array(loaded.data_config["std"], dtype=np.float32)
    images = np.stack([(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0 - mean) / std
                       for path, _ in items])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = np.array([label for _, label in items])
    model = loaded.model.eval()
    predictions = np.concatenate([model(chunk).argmax(1).numpy() for chunk in batch.split(250)])
    return 100.0 * float(np.mean(predictions == labels))


@pytest.mark.shared
@pytest.mark.slow
@needs_shared(RESNET20_JPEG, JPEG_TRAIN, JPEG_VAL)
def test_pruned_resnet20_recovers_in_a_short_finetune(cli, tmp_path: Path) -> None:
    items = _val_subset(tmp_path / "val500")
    pruned, tuned = tmp_path / "pruned.safetensors", tmp_path / "tuned.safetensors"
    result = cli("prune", "--checkpoint", RESNET20_JPEG, "--metric", "magnitude-l2", "--ratio", "0.5",
                 "--data", JPEG_TRAIN.parent, "--limit", "512", "--calib-batch-size", "128", "--bn-batches", "4",
                 "--device", "cpu", "--out", pruned, "--quiet")
    assert result.exit_code == 0, result.stderr
    result = cli("finetune", pruned, "--data", JPEG_TRAIN.parent, "--eval-data", tmp_path / "val500", "--limit", "1536",
                 "--epochs", "1", "--batch-size", "64", "--lr", "0.02", "--device", "cpu", "--out", tuned,
                 "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)

    dense, before, after = _top1(RESNET20_JPEG, items), _top1(pruned, items), _top1(tuned, items)
    print(f"val500 top-1: dense {dense:.1f}, pruned {before:.1f}, finetuned {after:.1f}")  # shown with -s
    assert dense > 85.0  # the published 88.1 % on the whole JPEG val split
    assert after >= before + 5.0, (before, after)
    assert after < dense
    # the command's own numbers agree with the independent ones (one image = 0.2 points)
    assert report["initial"]["val_top1"] == pytest.approx(before, abs=0.21)
    assert report["final"]["val_top1"] == pytest.approx(after, abs=0.21)
    assert report["initial"]["val_samples"] == report["final"]["val_samples"] == 10 * PER_CLASS
