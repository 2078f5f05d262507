"""The deployable router: light expert on every sample, heavy expert only on the uncertain ones.

Per batch: run the light expert, score its logits with the signal, gather the samples whose
signal is below the threshold, run the heavy expert on that sub-batch only, and scatter its
logits back. Written so that `torch.jit.script` compiles it (for `agfprune route export`).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from agfprune.core.atomic import atomic_path
from agfprune.core.errors import ModelError
from agfprune.core.routing.signals import SignalFunction, dynamic_scores, get_signal, is_dynamic


def signal_module(name: str) -> nn.Module:
    """Wrap the registered signal function `name` in a module TorchScript can compile."""
    function: SignalFunction = get_signal(name)

    class Signal(nn.Module):
        def forward(self, logits: torch.Tensor) -> torch.Tensor:
            return function(logits)

    Signal.__name__ = Signal.__qualname__ = f"Signal_{name}"
    return Signal()


class Cascade(nn.Module):
    """light(x) where signal(light(x)) >= threshold, heavy(x) elsewhere; heavy runs on the rest only."""

    def __init__(self, light: nn.Module, heavy: nn.Module, signal: str, threshold: float) -> None:
        super().__init__()
        self.light = light
        self.heavy = heavy
        self.signal = nn.Identity() if is_dynamic(signal) else signal_module(signal)
        self.signal_name: str = signal
        # float32, like the signal, so that calibration and deployment compare identical numbers
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Light logits and the signal of each sample."""
        light_logits = self.light(x)
        return light_logits, self.signal(light_logits)

    @torch.jit.export
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the boolean mask of samples that went to the heavy expert."""
        light_logits, scores = self.score(x)
        to_heavy = scores < self.threshold
        indices = torch.nonzero(to_heavy).flatten()
        if indices.numel() == 0:
            return light_logits, to_heavy
        if indices.numel() == x.shape[0]:
            return self.heavy(x).to(light_logits.dtype), to_heavy
        heavy_logits = self.heavy(x.index_select(0, indices)).to(light_logits.dtype)
        return light_logits.index_copy(0, indices, heavy_logits), to_heavy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]


class GradientCascade(Cascade):
    """A Cascade whose signal needs the light expert's input gradients (a dynamic signal): one
    backward pass per batch on top of the light forward pass, even under torch.no_grad(). Eager
    only: TorchScript export is refused for it."""

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dynamic_scores(self.signal_name, self.light, x)


def make_cascade(light: nn.Module, heavy: nn.Module, signal: str, threshold: float) -> Cascade:
    """The Cascade for `signal`: scriptable for zero-cost signals, gradient-computing for dynamic ones."""
    kind = GradientCascade if is_dynamic(signal) else Cascade
    return kind(light, heavy, signal, threshold)


@contextlib.contextmanager
def _threshold(cascade: nn.Module, value: float):
    saved = cascade.threshold.clone()
    cascade.threshold.fill_(value)
    try:
        yield
    finally:
        cascade.threshold.copy_(saved)


@torch.no_grad()
def script_cascade(cascade: Cascade, input_size: tuple[int, ...], batch_size: int = 8,
                   tolerance: float = 1e-4) -> torch.jit.ScriptModule:
    """torch.jit.script the cascade and check it against the eager one on a batch that exercises
    both experts (threshold set to the batch's median signal during the check)."""
    cascade.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice is noise for users
        try:
            scripted = torch.jit.script(cascade)
        except Exception as exc:  # TorchScript raises many types for unsupported code
            text = str(exc).strip().splitlines()
            raise ModelError(f"cannot compile the cascade to TorchScript: {text[0][:200] if text else exc}") from None
    device = cascade.threshold.device
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, *input_size, generator=generator).to(device)
    median = float(cascade.signal(cascade.light(batch)).median())
    for value in (median, float(cascade.threshold)):
        with _threshold(cascade, value), _threshold(scripted, value):
            eager_logits, eager_mask = cascade.route(batch)
            script_logits, script_mask = scripted.route(batch)
        if not torch.equal(eager_mask, script_mask) or not torch.allclose(
                eager_logits, script_logits, atol=tolerance, rtol=tolerance):
            difference = float((eager_logits - script_logits).abs().max())
            raise ModelError(f"TorchScript cascade disagrees with the eager one (max |diff| {difference:.3g}, "
                             f"routing equal: {bool(torch.equal(eager_mask, script_mask))})")
    return scripted


def save_torchscript(scripted: torch.jit.ScriptModule, path: str | Path,
                     metadata: dict[str, str] | None = None) -> None:
    """Write a compiled cascade atomically; `metadata` goes into the extra file agfprune.json."""
    import json

    extra = {"agfprune.json": json.dumps(metadata or {}, sort_keys=True)}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save's deprecation notice
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
