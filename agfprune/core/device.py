"""Device selection and mixed precision, the same rules for every command."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from agfprune.core.errors import UsageError


def resolve_device(spec: str = "auto") -> torch.device:
    """Map auto|cpu|cuda|cuda:N to a torch.device; auto takes CUDA when it is available."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (use auto or cpu)")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return device
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA (bf16 where supported); a no-op on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that runs with the same seed repeat."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
