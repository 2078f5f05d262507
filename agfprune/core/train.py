"""The reusable training step: optimiser, schedule, losses, mixed precision and a NaN guard.

Nothing here knows about files or epochs; `agfprune.core.finetune` drives it. Parameter groups and
the warm-up + cosine schedule are timm's; the schedule is set from the number of updates done, so
a resumed run continues on exactly the same learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from agfprune.core.device import autocast
from agfprune.core.errors import NumericalError, UsageError

OPTIMIZERS = ("sgd", "adamw")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's split (`param_groups_weight_decay`): weight decay on matrices and kernels; none on norms,
    biases, other 1-d tensors, nor on what the model names in `no_weight_decay()` (a ViT's position
    embedding and class token). Frozen parameters (e.g. the option-A shortcut) are left out, so no
    optimiser state is kept for them."""
    from timm.optim import param_groups_weight_decay

    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=tuple(no_decay))
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over `parameter_groups`."""
    if lr <= 0 or not math.isfinite(lr):
        raise UsageError(f"--lr {lr}: must be a positive number")
    if weight_decay < 0:
        raise UsageError(f"--weight-decay {weight_decay}: must be ≥ 0")
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise UsageError("the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise UsageError(f"--optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_ratio: float = 0.0) -> Any:
    """timm's `CosineLRScheduler`, stepped once per update (`step_update(updates_done)`): a linear
    warm-up over `warmup_steps` updates, where update k uses (k + 1) / (warmup_steps + 1) of the base
    rate (never 0), then a cosine from the base rate down to `min_ratio` of it at `total_steps`.

    Its state is plain values (`state_dict`), so a resumed run continues on exactly the same rates.
    """
    import logging

    from timm.scheduler import CosineLRScheduler

    total = max(1, int(total_steps))
    warmup = max(0, min(int(warmup_steps), total))
    base = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    # timm warns when the cosine spans a single update; that is a legitimate (tiny) run here
    timm_logger = logging.getLogger(CosineLRScheduler.__module__)
    level = timm_logger.level
    timm_logger.setLevel(logging.ERROR)
    try:
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=min_ratio * base,
                                 warmup_t=warmup, warmup_lr_init=base / (warmup + 1), warmup_prefix=True,
                                 t_in_epochs=False)
    finally:
        timm_logger.setLevel(level)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate the next update will use (all groups share it)."""
    return float(optimizer.param_groups[0]["lr"])


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation loss: KL(teacher ‖ student) at temperature T, scaled by T² so that
    its gradient size does not depend on T."""
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


@dataclass
class LossConfig:
    """How the training loss is made: label-smoothed cross-entropy, optionally mixed with KD."""

    label_smoothing: float = 0.0
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0

    def validate(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise UsageError(f"--kd-alpha {self.kd_alpha}: must be in [0, 1]")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise UsageError(f"--kd-temperature {self.kd_temperature}: must be positive")


def training_loss(logits: torch.Tensor, labels: torch.Tensor, config: LossConfig,
                  teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """(1 − α)·CE_smoothed + α·KD (α = 0 without a teacher)."""
    ce = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    if teacher_logits is None or config.kd_alpha == 0.0:
        return ce
    return (1.0 - config.kd_alpha) * ce + config.kd_alpha * kd_loss(logits, teacher_logits,
                                                                      config.kd_temperature)


class Trainer:
    """One optimisation step at a time, with AMP and channels_last on CUDA and a NaN/Inf guard."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                 loss_config: LossConfig, device: torch.device, teacher: nn.Module | None = None,
                 amp: bool = True, grad_clip: float | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.loss_config = loss_config
        self.device = device
        self.teacher = teacher
        self.amp = amp and device.type == "cuda"
        self.grad_clip = grad_clip
        self.channels_last = device.type == "cuda"
        fp16 = self.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def step(self, images: torch.Tensor, labels: torch.Tensor, step_index: int) -> float:
        """Forward, backward and update on one batch; returns the loss. Raises NumericalError
        naming the step when the loss or the gradients are not finite (weights stay untouched)."""
        self.model.train()
        images, labels = self._inputs(images), labels.to(self.device, non_blocking=True)
        teacher_logits = None
        if self.teacher is not None and self.loss_config.kd_alpha > 0:
            self.teacher.eval()
            with torch.no_grad(), autocast(self.device, self.amp):
                teacher_logits = self.teacher(images)
        with autocast(self.device, self.amp):
            logits = self.model(images)
        loss = training_loss(logits, labels, self.loss_config, teacher_logits)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NumericalError(f"training loss is {value} at step {step_index}; lower --lr, "
                                 "or check the data and the checkpoint for NaN/Inf")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        else:
            norm = _grad_norm(self.model)
        if not math.isfinite(float(norm)) and not self.scaler.is_enabled():
            raise NumericalError(f"gradients are not finite at step {step_index}; lower --lr")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step_update(step_index + 1)
        return value


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())
