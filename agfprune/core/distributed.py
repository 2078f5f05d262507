"""Data-parallel runs under `torchrun`: process-group setup, samplers, rank-0 writes, reductions.

Without torchrun (no WORLD_SIZE in the environment, or 1) everything here degrades to a no-op,
so the same code path serves one process and many.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from agfprune.core.errors import ModelError, UsageError


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
    """Leave the process group (safe to call when none was joined).

    Every rank waits for the others first: a rank that tore down its gloo group while rank 0 was still
    writing the file could abort in gloo's teardown ("terminate called without an active exception")."""
    if context.enabled and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a peer is already gone: nothing left to wait for
            pass
        dist.destroy_process_group()


def agree_with_rank_zero(value: Any) -> Any:
    """Rank 0's `value` on every rank of a torchrun job; `value` itself in a single process.

    For jobs whose ranks otherwise share nothing but files (compare): a short-lived gloo group is
    joined, used for this one broadcast and left, so no collective outlives it. Ranks named by
    RANK/WORLD_SIZE alone, without torchrun's MASTER_ADDR, have no job to join and keep their own."""
    if env_world_size() <= 1 or "MASTER_ADDR" not in os.environ:
        return value
    context, _ = init_distributed(torch.device("cpu"))
    try:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    finally:
        shutdown(context)


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


def _structure(value: Any) -> Any:
    """Keys and shapes of a nested dict of tensors/numbers (what all ranks must agree on)."""
    if isinstance(value, dict):
        return {str(k): _structure(v) for k, v in sorted(value.items())}
    if isinstance(value, torch.Tensor):
        return ["tensor", list(value.shape), str(value.dtype)]
    return type(value).__name__


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for _, v in sorted(value.items()) for leaf in _leaves(v)]
    return [value]


def _rebuild(value: Any, leaves: Iterator[Any]) -> Any:
    if isinstance(value, dict):
        return {k: _rebuild(v, leaves) for k, v in sorted(value.items())}
    return next(leaves)


def all_reduce_sum_tree(value: Any, context: DistContext, device: torch.device) -> Any:
    """Sum a nested dict of tensors and ints/floats over all ranks (identity in one process).

    Tensors are reduced on `device` (NCCL needs CUDA tensors) and keep their dtype; numbers travel
    packed in one float64 tensor (exact for counts below 2**53). Every rank must hold the same
    keys and shapes, which is checked first, so that a mismatch fails instead of hanging or mixing."""
    if not context.enabled or not dist.is_initialized():
        return value
    structures: list[Any] = [None] * context.world_size
    dist.all_gather_object(structures, _structure(value))
    if any(other != structures[0] for other in structures):
        raise ModelError("distributed ranks collected different statistics (models or data differ between ranks)")
    leaves = _leaves(value)
    reduced: list[Any] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            buffer = leaf.to(device)
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            reduced.append(buffer.to(leaf.device))
        else:
            reduced.append(None)
    numbers = [leaf for leaf in leaves if not isinstance(leaf, torch.Tensor)]
    if numbers:
        packed = torch.tensor([float(n) for n in numbers], dtype=torch.float64, device=device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        totals = iter(packed.tolist())
        for position, leaf in enumerate(leaves):
            if not isinstance(leaf, torch.Tensor):
                total = next(totals)
                reduced[position] = int(round(total)) if isinstance(leaf, int) else total
    return _rebuild(value, iter(reduced))


def all_reduce_max(number: int, context: DistContext, device: torch.device) -> int:
    """The largest `number` over all ranks."""
    if not context.enabled or not dist.is_initialized():
        return number
    buffer = torch.tensor([number], dtype=torch.int64, device=device)
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return int(buffer.item())


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
