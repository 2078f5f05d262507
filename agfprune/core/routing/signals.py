"""Zero-cost routing signals: how sure the light expert is, from its logits alone.

Every signal is computed from softmax *probabilities* (not raw logits), so that it lives on a
fixed scale whatever the logit temperature: higher always means "more confident, keep the light
answer". Each is one small TorchScript-compatible function registered by name, so that the
deployable Cascade can compile it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agfprune.core.errors import UsageError

SignalFunction = Callable[[torch.Tensor], torch.Tensor]
SIGNALS: dict[str, SignalFunction] = {}


def register_signal(name: str) -> Callable[[SignalFunction], SignalFunction]:
    """Decorator: make `function(logits) -> (N,) scores` available under `name`."""

    def decorate(function: SignalFunction) -> SignalFunction:
        SIGNALS[name] = function
        return function

    return decorate


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


def get_signal(name: str) -> SignalFunction:
    """The registered signal function called `name`; a one-line UsageError for unknown names."""
    try:
        return SIGNALS[name]
    except KeyError:
        raise UsageError(f"--signal {name!r}: unknown signal (valid: {', '.join(sorted(SIGNALS))})") from None


def compute_signal(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Signal `name` of each row of `logits` (float32, same device)."""
    return get_signal(name)(logits)
