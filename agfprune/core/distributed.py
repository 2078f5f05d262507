"""Data-parallel runs under `torchrun`: process-group setup, samplers, rank-0 writes, reductions.

Without torchrun (no WORLD_SIZE in the environment, or 1) everything here degrades to a no-op,
so the same code path serves one process and many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from agfprune.core.errors import UsageError


@dataclass
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints results."""
        return self.rank == 0


SINGLE = DistContext()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the torchrun job described by RANK/WORLD_SIZE/LOCAL_RANK (gloo on CPU, nccl on CUDA).

    Returns the context and the device this rank should use (cuda:LOCAL_RANK on CUDA).
    """
    world_size = env_world_size()
    if world_size <= 1:
        return SINGLE, device
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, backend), device


def shutdown(context: DistContext) -> None:
    """Leave the process group (safe to call when none was joined)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext | None = None) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place, and return it (identity in a single process).

    Calibration can use it to add up per-rank statistics (sums and counts, not means)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if context is None or context.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sum_dict(values: dict[str, torch.Tensor], context: DistContext | None = None) -> dict[str, torch.Tensor]:
    """`all_reduce_sum` over every tensor of a dict (e.g. per-channel AGF sums and counts)."""
    return {name: all_reduce_sum(tensor, context) for name, tensor in values.items()}


def shard_indices(length: int, context: DistContext) -> list[int]:
    """This rank's share of range(length) without padding, so that sums over ranks are exact."""
    return list(range(context.rank, length, context.world_size))


def wrap_model(model: torch.nn.Module, context: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when running under torchrun, else `model` itself."""
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)
