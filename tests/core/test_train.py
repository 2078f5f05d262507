"""The training step: parameter groups, schedule, losses, NaN guard."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from agfprune.core.errors import NumericalError, UsageError
from agfprune.core.models import create_model
from agfprune.core.train import (LossConfig, Trainer, WarmupCosine, build_optimizer, kd_loss,
                                 parameter_groups, training_loss)


def test_weight_decay_skips_norms_biases_and_frozen_parameters():
    model = create_model("cifar_resnet20")
    groups = parameter_groups(model, 5e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    undecayed = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # the frozen option-A shortcut
            assert id(parameter) not in decayed | undecayed, name
        elif parameter.ndim <= 1:
            assert id(parameter) in undecayed, name
        else:
            assert id(parameter) in decayed, name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all("shortcut" in n for n in frozen)


def test_optimizers_and_bad_values():
    model = nn.Linear(4, 2)
    sgd = build_optimizer(model, "sgd", 0.1, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert isinstance(build_optimizer(model, "adamw", 1e-3, 0.05), torch.optim.AdamW)
    with pytest.raises(UsageError, match="--optimizer"):
        build_optimizer(model, "lion", 0.1, 0.0)
    with pytest.raises(UsageError, match="--lr"):
        build_optimizer(model, "sgd", 0.0, 0.0)


def test_warmup_then_cosine_and_resumable_state():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    schedule = WarmupCosine(optimizer, total_steps=10, warmup_steps=4)
    rates = [schedule.last_lr()]
    for _ in range(9):
        schedule.step()
        rates.append(schedule.last_lr())
    assert rates[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert rates[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[-1] < 0.1
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    restored = WarmupCosine(other, total_steps=10, warmup_steps=4)
    partial = WarmupCosine(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0), 10, 4)
    for _ in range(6):
        partial.step()
    restored.load_state_dict(partial.state_dict())
    assert restored.last_lr() == pytest.approx(rates[6])


def test_kd_loss_and_mixed_loss():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(8, 10), 4.0).item() > 0
    labels = torch.randint(0, 10, (8,))
    teacher = torch.randn(8, 10)
    only_kd = training_loss(logits, labels, LossConfig(kd_alpha=1.0, kd_temperature=2.0), teacher)
    assert only_kd.item() == pytest.approx(kd_loss(logits, teacher, 2.0).item())
    smoothed = training_loss(logits, labels, LossConfig(label_smoothing=0.1))
    assert smoothed.item() != pytest.approx(training_loss(logits, labels, LossConfig()).item())
    with pytest.raises(UsageError, match="--kd-alpha"):
        LossConfig(kd_alpha=1.5).validate()


def test_nan_loss_names_the_step_and_leaves_weights_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    optimizer = build_optimizer(model, "sgd", 0.1, 0.0)
    trainer = Trainer(model, optimizer, WarmupCosine(optimizer, 10), LossConfig(), torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.full((2, 3, 2, 2), math.nan)
    with pytest.raises(NumericalError, match="step 7"):
        trainer.step(images, torch.tensor([0, 1]), step_index=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loss = trainer.step(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]), step_index=8)
    assert math.isfinite(loss)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
