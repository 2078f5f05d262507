"""Accuracy, loss, size and speed of a model on a data set."""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from agfprune.core.device import autocast
from agfprune.core.errors import DataError
from agfprune.core.progress import SILENT, Progress


@dataclass
class Accuracy:
    """Top-1/top-5 (percent) and mean cross-entropy over `samples` images."""

    top1: float
    top5: float
    loss: float
    samples: int


@dataclass
class ModelCost:
    """Parameter count and multiply-accumulates for one input."""

    params: int
    macs: int


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DataError(f"the data has label {int(labels.max())} but the model predicts only "
                        f"{num_classes} classes")


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
                   progress: Progress = SILENT, description: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, CPU) and labels of a loader, in loader order."""
    model.eval()
    logits_all, labels_all = [], []
    for images, labels in progress.track(loader, total=len(loader), description=description):
        with autocast(device, amp):
            logits = model(images.to(device, non_blocking=True))
        logits_all.append(logits.float().cpu())
        labels_all.append(labels)
    return torch.cat(logits_all), torch.cat(labels_all)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    """Top-1/top-5 (timm's `accuracy`; top-k = all classes when there are fewer than 5) and loss."""
    from timm.utils import accuracy

    _check_labels(labels, logits.shape[1])
    samples = len(labels)
    if samples == 0:
        return Accuracy(top1=0.0, top5=0.0, loss=float("nan"), samples=0)
    top1, top5 = accuracy(logits, labels, topk=(1, min(5, logits.shape[1])))
    loss = F.cross_entropy(logits, labels).item()
    return Accuracy(top1=top1.item(), top5=top5.item(), loss=loss if math.isfinite(loss) else float("nan"),
                    samples=samples)


def evaluate_accuracy(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
                      progress: Progress = SILENT) -> Accuracy:
    """Top-1, top-5 and mean loss of `model` over `loader`."""
    logits, labels = predict_logits(model, loader, device, amp, progress, "evaluate")
    return accuracy_from_logits(logits, labels)


def _op_counter() -> Any:
    """torch-pruning's op counter, without importing timm when this process has not.

    The counter imports timm only to add hooks for timm's attention classes, and a process that
    never imported timm holds no timm model; importing it anyway would double `agfprune info`'s
    start-up. Once timm is loaded, its attention hooks are added as torch-pruning itself does.
    """
    if "torch_pruning" not in sys.modules and "timm" not in sys.modules:
        sys.modules["timm"] = None  # type: ignore[assignment]  # makes `import timm` fail fast
        try:
            import torch_pruning  # noqa: F401
        finally:
            del sys.modules["timm"]
    from torch_pruning.utils import op_counter

    if "timm" in sys.modules and not op_counter.has_timm:
        import timm

        for attention in (timm.models.vision_transformer.Attention, timm.models.swin_transformer.WindowAttention):
            op_counter.MODULES_MAPPING.setdefault(attention, op_counter.timm_multihead_attention_counter_hook)
        op_counter.has_timm = True
    return op_counter


def count_cost(model: nn.Module, input_size: tuple[int, ...], device: torch.device | str = "cpu") -> ModelCost:
    """Parameters and MACs for one image, counted by torch-pruning's op counter."""
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_size, device=device)
    macs, params = _op_counter().count_ops_and_params(model, example)
    model.train(was_training)
    return ModelCost(params=int(params), macs=int(macs))


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: tuple[int, ...], batch_size: int, device: torch.device,
                    warmup: int = 3, repeats: int = 10, amp: bool = True) -> float:
    """Median wall time (ms) of one forward pass on a batch, after warm-up runs."""
    model.eval()
    batch = torch.randn(batch_size, *input_size, device=device)
    timings = []
    for step in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(device, amp):
            model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            timings.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(timings)


def as_dict(record: Accuracy | ModelCost) -> dict:
    return asdict(record)
