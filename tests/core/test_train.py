"""The training step: parameter groups, schedule, losses, NaN guard."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from agfprune.core.errors import NumericalError, UsageError
from agfprune.core.models import create_model
from agfprune.core.train import (LossConfig, Trainer, build_optimizer, current_lr, kd_loss, parameter_groups,
                                 training_loss, warmup_cosine)


def _split(groups: list[dict]) -> tuple[set[int], set[int]]:
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    return decayed, undecayed


def test_weight_decay_skips_norms_biases_and_frozen_parameters():
    model = create_model("cifar_resnet20")
    groups = parameter_groups(model, 5e-4)
    decayed, undecayed = _split(groups)
    assert {g["weight_decay"] for g in groups} == {5e-4, 0.0}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # the frozen option-A shortcut
            assert id(parameter) not in decayed | undecayed, name
        elif parameter.ndim <= 1:
            assert id(parameter) in undecayed, name
        else:
            assert id(parameter) in decayed, name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all("shortcut" in n for n in frozen)


def test_weight_decay_skips_what_a_timm_model_names_in_no_weight_decay():
    model = create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    decayed, undecayed = _split(parameter_groups(model, 0.05))
    parameters = dict(model.named_parameters())
    assert parameters["pos_embed"].ndim == 3 and id(parameters["pos_embed"]) in undecayed
    assert id(parameters["cls_token"]) in undecayed
    assert id(parameters["blocks.0.attn.qkv.weight"]) in decayed


def test_optimizers_and_bad_values():
    model = nn.Linear(4, 2)
    sgd = build_optimizer(model, "sgd", 0.1, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert isinstance(build_optimizer(model, "adamw", 1e-3, 0.05), torch.optim.AdamW)
    with pytest.raises(UsageError, match="--optimizer"):
        build_optimizer(model, "lion", 0.1, 0.0)
    with pytest.raises(UsageError, match="--lr"):
        build_optimizer(model, "sgd", 0.0, 0.0)


def _rates(optimizer: torch.optim.Optimizer, schedule, updates: int, start: int = 0) -> list[float]:
    """The rate each update uses, stepping the schedule as the Trainer does."""
    rates = []
    for update in range(start, updates):
        rates.append(current_lr(optimizer))
        schedule.step_update(update + 1)
    return rates


def test_warmup_then_cosine_matches_the_formula_and_resumes():
    total, warmup = 10, 4
    expected = [(k + 1) / (warmup + 1) if k < warmup
                else 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) for k in range(total)]
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=2.0)
    rates = _rates(optimizer, warmup_cosine(optimizer, total, warmup), total)
    assert rates == pytest.approx([2.0 * r for r in expected], rel=1e-12)
    assert rates[0] > 0  # the first update already learns
    # resume after 6 updates: optimiser and schedule state restored into fresh objects
    partial_optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=2.0)
    partial = warmup_cosine(partial_optimizer, total, warmup)
    _rates(partial_optimizer, partial, 6)
    restored_optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=2.0)
    restored = warmup_cosine(restored_optimizer, total, warmup)
    restored_optimizer.load_state_dict(partial_optimizer.state_dict())
    restored.load_state_dict(partial.state_dict())
    assert _rates(restored_optimizer, restored, total, start=6) == rates[6:]


def test_schedule_state_loads_with_weights_only(tmp_path):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    schedule = warmup_cosine(optimizer, 10, 2, min_ratio=0.1)
    torch.save(schedule.state_dict(), tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True) == schedule.state_dict()


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
    trainer = Trainer(model, optimizer, warmup_cosine(optimizer, 10), LossConfig(), torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.full((2, 3, 2, 2), math.nan)
    with pytest.raises(NumericalError, match="step 7"):
        trainer.step(images, torch.tensor([0, 1]), step_index=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loss = trainer.step(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]), step_index=8)
    assert math.isfinite(loss)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _kd_by_hand(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """T² · mean over samples of KL(teacher ‖ student) at temperature T, in float64 NumPy."""
    import numpy as np

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_p_teacher = log_softmax(teacher.double().numpy() / temperature)
    log_p_student = log_softmax(student.double().numpy() / temperature)
    kl = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(axis=1)
    return float(temperature**2 * kl.mean())


def test_kd_loss_is_hintons_formula_computed_independently():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(16, 10, generator=generator) * 3, torch.randn(16, 10, generator=generator) * 3
    for temperature in (1.0, 4.0):
        assert kd_loss(student, teacher, temperature).item() == pytest.approx(
            _kd_by_hand(student, teacher, temperature), rel=1e-5)
    # the two directions of the KL differ clearly here, so a reversed KL cannot pass the check above
    assert _kd_by_hand(teacher, student, 4.0) != pytest.approx(_kd_by_hand(student, teacher, 4.0), rel=0.05)


def test_kd_gradient_size_does_not_shrink_with_temperature():
    """With the T² factor, d KD / d student_logits = T · (p_student − p_teacher) / batch."""
    generator = torch.Generator().manual_seed(2)
    student = (torch.randn(8, 10, generator=generator) * 2).requires_grad_()
    teacher = torch.randn(8, 10, generator=generator) * 2
    temperature = 4.0
    kd_loss(student, teacher, temperature).backward()
    expected = temperature * (torch.softmax(student.detach() / temperature, 1)
                              - torch.softmax(teacher / temperature, 1)) / 8
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_mixed_loss_weights_cross_entropy_and_distillation():
    generator = torch.Generator().manual_seed(3)
    logits, teacher = torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    log_probs = torch.log_softmax(logits.double(), 1)
    cross_entropy = float(-log_probs[torch.arange(8), labels].mean())
    mixed = training_loss(logits, labels, LossConfig(kd_alpha=0.3, kd_temperature=2.0), teacher)
    assert mixed.item() == pytest.approx(0.7 * cross_entropy + 0.3 * _kd_by_hand(logits, teacher, 2.0), rel=1e-5)


def test_trainer_distils_from_the_teacher_it_is_given():
    """kd_alpha = 1: the step's loss is the distillation loss against *this* teacher's logits, and
    two different teachers move the student to different weights."""
    def student() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 5))

    torch.manual_seed(1)
    teachers = [nn.Sequential(nn.Flatten(), nn.Linear(12, 5)) for _ in range(2)]
    images, labels = torch.randn(6, 3, 2, 2), torch.randint(0, 5, (6,))
    config = LossConfig(kd_alpha=1.0, kd_temperature=3.0)
    weights = []
    for teacher in teachers:
        model = student()
        with torch.no_grad():
            expected = _kd_by_hand(model(images), teacher(images), 3.0)
        optimizer = build_optimizer(model, "sgd", 0.5, 0.0)
        trainer = Trainer(model, optimizer, warmup_cosine(optimizer, 10), config, torch.device("cpu"), teacher=teacher)
        assert trainer.step(images, labels, step_index=0) == pytest.approx(expected, rel=1e-5)
        weights.append(model[1].weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1])


def test_trainer_steps_the_schedule_once_per_update():
    """Update k is taken at the schedule's rate for k, so warm-up starts learning at the first step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    optimizer = build_optimizer(model, "sgd", 0.3, 0.0)
    trainer = Trainer(model, optimizer, warmup_cosine(optimizer, total_steps=6, warmup_steps=2), LossConfig(),
                      torch.device("cpu"))
    expected = [0.3 * (k + 1) / 3 if k < 2 else 0.3 * 0.5 * (1 + math.cos(math.pi * (k - 2) / 4)) for k in range(6)]
    used = []
    for step in range(6):
        used.append(current_lr(optimizer))
        trainer.step(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), step_index=step)
    assert used == pytest.approx(expected, abs=1e-12)
