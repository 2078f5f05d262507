"""Routing signals: how sure the light expert is; higher always means "keep the light answer".

Zero-cost signals (`SIGNALS`) are computed from softmax *probabilities* (not raw logits), so that
they live on a fixed scale whatever the logit temperature. Each is one small TorchScript-compatible
function registered by name, so that the deployable Cascade can compile it.

Dynamic signals (`DYNAMIC_SIGNALS`) need gradients of the light expert, i.e. a backward pass per
input on top of its forward pass. They exist to measure whether gradient information tells easy
from hard inputs better than the logits do; a Cascade using one runs eagerly only (TorchScript
export has no autograd).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from agfprune.core.errors import UsageError
from agfprune.core.registry import Registry

SignalFunction = Callable[[torch.Tensor], torch.Tensor]
_UNKNOWN = "--signal {name!r}: unknown signal (valid: {valid})"
SIGNALS: Registry[SignalFunction] = Registry("signal", _UNKNOWN, sort=True)


def register_signal(name: str) -> Callable[[SignalFunction], SignalFunction]:
    """Decorator: make `function(logits) -> (N,) scores` available under `name`."""
    return SIGNALS.decorator(name)


@register_signal("confidence")
def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 softmax probability, in [1/C, 1]."""
    return torch.softmax(logits.float(), dim=1).amax(dim=1)


@register_signal("margin")
def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability, in [0, 1] (0 with a single class)."""
    probabilities = torch.softmax(logits.float(), dim=1)
    if probabilities.shape[1] < 2:
        return torch.zeros(probabilities.shape[0], dtype=probabilities.dtype, device=probabilities.device)
    top2 = probabilities.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@register_signal("entropy")
def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Negative Shannon entropy (nats) of the softmax, in [-log C, 0]; computed from log-softmax
    so that saturated probabilities do not give 0·log 0 = NaN."""
    log_probabilities = torch.log_softmax(logits.float(), dim=1)
    return (log_probabilities.exp() * log_probabilities).sum(dim=1)


@dataclass(frozen=True)
class DynamicSignal:
    """A signal computed from the light model and its input: `function(model, images) -> (logits,
    scores)`. `extra_macs_factor` is its cost beyond the light forward pass, in light forward MACs."""

    function: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    extra_macs_factor: float
    extra_cost: str


DYNAMIC_SIGNALS: Registry[DynamicSignal] = Registry("dynamic signal", _UNKNOWN, sort=True)
ALL_SIGNALS: Registry[SignalFunction | DynamicSignal] = Registry("signal", _UNKNOWN, chain=(SIGNALS, DYNAMIC_SIGNALS))


def register_dynamic_signal(name: str, extra_macs_factor: float, extra_cost: str):
    """Decorator: make `function(model, images) -> (logits, scores)` available under `name`."""
    return DYNAMIC_SIGNALS.decorator(name, lambda function: DynamicSignal(function, extra_macs_factor, extra_cost))


@register_dynamic_signal(
    "input-grad", extra_macs_factor=1.0,
    extra_cost="one backward pass of the light expert to its input (about 1x its forward MACs; "
               "weight gradients are not computed) and its activations kept in memory")
def input_gradient_norm(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minus the L2 norm of d CE(logits, own top-1) / d input, per sample, in [-inf, 0]: a model
    whose prediction barely moves when the input moves is sure of it. The summed loss gives each
    sample its own gradient (eval mode: no batch statistics couple the samples)."""
    with torch.enable_grad():
        inputs = images.detach().clone().requires_grad_(True)
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float(), logits.argmax(dim=1).detach(), reduction="sum")
        (gradient,) = torch.autograd.grad(loss, inputs)
    return logits.detach(), -gradient.flatten(1).float().norm(dim=1)


def signal_names() -> list[str]:
    """Every signal name: zero-cost ones first, then dynamic ones."""
    return ALL_SIGNALS.names()


def is_dynamic(name: str) -> bool:
    return name in DYNAMIC_SIGNALS


def check_signal(name: str) -> str:
    """`name` if it is a registered signal of either kind; a one-line UsageError otherwise."""
    return ALL_SIGNALS.check(name)


def get_signal(name: str) -> SignalFunction:
    """The zero-cost signal function called `name`; a one-line UsageError for unknown names and for
    dynamic signals, which need the model and not only its logits."""
    check_signal(name)
    if name in DYNAMIC_SIGNALS:
        raise UsageError(f"signal {name!r} needs the light expert's gradients, not only its logits")
    return SIGNALS[name]


def dynamic_scores(name: str, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and dynamic signal `name` of a batch."""
    check_signal(name)
    return DYNAMIC_SIGNALS[name].function(model, images)


def extra_macs(name: str, light_macs: float) -> float:
    """MACs per image a signal costs beyond the light forward pass (0 for zero-cost signals)."""
    return DYNAMIC_SIGNALS[name].extra_macs_factor * light_macs if name in DYNAMIC_SIGNALS else 0.0


def compute_signal(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Signal `name` of each row of `logits` (float32, same device)."""
    return get_signal(name)(logits)
