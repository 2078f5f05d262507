"""Device selection and mixed precision, the same rules for every command."""

from __future__ import annotations

import contextlib
import os
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


def autocast_dtype(device: torch.device, enabled: bool = True, fp16: bool = True) -> torch.dtype | None:
    """The autocast dtype on CUDA: bf16 where supported, else fp16 (None with `fp16=False`: a backward
    pass without loss scaling, as calibration's, would flush small fp16 gradients to zero); None on CPU."""
    if device.type != "cuda" or not enabled:
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if fp16 else None


def autocast(device: torch.device, enabled: bool = True, fp16: bool = True) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA (bf16 where supported; see `autocast_dtype`); a no-op on CPU."""
    dtype = autocast_dtype(device, enabled, fp16)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that runs with the same seed repeat."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_threads() -> int:
    """Intra-op threads that do not collapse on a shared CPU: OMP_NUM_THREADS when set (torchrun
    sets 1 per rank), otherwise the cores this process may use divided by the local ranks, less
    the cores other processes keep busy (1-minute load average), at least 1. Busy-waiting OpenMP
    threads on cores that other processes hold slow every step down, often by several times."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    try:
        busy = int(os.getloadavg()[0])
    except OSError:
        busy = 0
    threads = max(1, min(cores // local, cores - busy))
    torch.set_num_threads(threads)
    return threads


def rank_device(device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK for a torchrun rank on CUDA (one GPU per rank); the device itself otherwise."""
    if device.type != "cuda" or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if local_rank >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
