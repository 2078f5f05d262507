"""Top-1, top-5 and loss of both evaluation paths (`evaluate` and finetune's sharded `validate`),
checked against answers worked out by hand and against an independent NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from agfprune.core.distributed import SINGLE
from agfprune.core.evaluate import accuracy_from_logits, evaluate_accuracy
from agfprune.core.finetune import validate


def _by_hand(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(top-1 %, top-5 %, mean cross-entropy) in float64, without torch."""
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = 100.0 * np.mean(order[:, 0] == labels)
    top5 = 100.0 * np.mean([label in row[:5] for row, label in zip(order, labels)])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    return float(top1), float(top5), loss


def _known_case() -> tuple[torch.Tensor, torch.Tensor]:
    """13 samples, 6 classes, answers fixed by construction: 7 right at top-1 (53.85 %), 11 within
    the top 5 (84.62 %); class 0 is always right and class 1 never, so neither the worst class
    (0 %), the best class (100 %) nor the mean over classes (50 %) equals top-1."""
    ranking = torch.arange(6, 0, -1, dtype=torch.float32)  # class 0 highest ... class 5 lowest
    logits, labels = [], []
    for label, rank in [(0, 1), (0, 1), (0, 1), (1, 2), (1, 6), (2, 1), (2, 6), (3, 1), (3, 3),
                        (4, 1), (4, 4), (5, 1), (5, 5)]:
        # put `label` at position `rank` (1 = predicted) of an otherwise fixed order
        others = [c for c in range(6) if c != label]
        order = others[: rank - 1] + [label] + others[rank - 1:]
        row = torch.empty(6)
        row[torch.tensor(order)] = ranking
        logits.append(row)
        labels.append(label)
    return torch.stack(logits), torch.tensor(labels)


def test_accuracy_of_a_case_worked_out_by_hand() -> None:
    logits, labels = _known_case()
    accuracy = accuracy_from_logits(logits, labels)
    assert accuracy.top1 == pytest.approx(100.0 * 7 / 13)
    assert accuracy.top5 == pytest.approx(100.0 * 11 / 13)
    assert accuracy.samples == 13
    assert accuracy.loss == pytest.approx(_by_hand(logits.numpy(), labels.numpy())[2], rel=1e-6)


def test_accuracy_matches_an_independent_computation_on_random_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(257, 10, generator=generator) * 3
    labels = torch.randint(0, 10, (257,), generator=generator)
    logits[labels == 3, 3] += 4.0  # uneven per-class accuracy: class 3 is easy
    top1, top5, loss = _by_hand(logits.double().numpy(), labels.numpy())
    accuracy = accuracy_from_logits(logits, labels)
    # timm's accuracy is float32: far below one sample's share (100 / 257 = 0.39 points)
    assert accuracy.top1 == pytest.approx(top1, abs=1e-4)
    assert accuracy.top5 == pytest.approx(top5, abs=1e-4)
    assert accuracy.loss == pytest.approx(loss, rel=1e-5)


class _Logits(nn.Module):
    """A "model" whose input already is its logits, so the answer is known before evaluating."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


@pytest.mark.parametrize("batch_size", [5, 13])
def test_evaluate_and_finetune_validation_report_the_same_known_numbers(batch_size: int) -> None:
    logits, labels = _known_case()
    dataset = TensorDataset(logits, labels)
    device = torch.device("cpu")
    loader = DataLoader(dataset, batch_size=batch_size)
    expected_loss = _by_hand(logits.numpy(), labels.numpy())[2]
    for accuracy in (evaluate_accuracy(_Logits(), loader, device),
                     validate(_Logits(), dataset, SINGLE, device, batch_size, 0, amp=False)):
        assert accuracy.top1 == pytest.approx(100.0 * 7 / 13)
        assert accuracy.top5 == pytest.approx(100.0 * 11 / 13)
        assert accuracy.loss == pytest.approx(expected_loss, rel=1e-6)
        assert accuracy.samples == 13


def test_evaluation_uses_the_running_batchnorm_statistics() -> None:
    """A BatchNorm whose running statistics map the inputs onto the known logits: evaluating in train
    mode (batch statistics) would give other numbers."""
    logits, labels = _known_case()
    norm = nn.BatchNorm1d(6, affine=False).train()  # train() on purpose: evaluation must switch it
    with torch.no_grad():
        norm.running_mean.copy_(torch.linspace(-3.0, 2.0, 6))
        norm.running_var.copy_(torch.linspace(0.5, 4.0, 6))
    inputs = logits * (norm.running_var + norm.eps).sqrt() + norm.running_mean
    dataset = TensorDataset(inputs, labels)
    for accuracy in (evaluate_accuracy(norm, DataLoader(dataset, batch_size=13), torch.device("cpu")),
                     validate(norm, dataset, SINGLE, torch.device("cpu"), 13, 0, amp=False)):
        assert accuracy.top1 == pytest.approx(100.0 * 7 / 13)
        assert accuracy.top5 == pytest.approx(100.0 * 11 / 13)
