"""One calibration pass: forward + backward over seeded batches, collecting by streaming sums every
statistic the metrics need (AGF, Taylor, input norms, parameter gradients), never per-sample
activations.

The statistics and their file live in calibration_stats.py, the hooks in calibration_hooks.py;
this module runs the pass. Hooks: AGF and Taylor sums are taken exactly at the removal sites of the model's dependency groups
(agfprune.core.pruning.groups: norm outputs, writes into residual streams, consumer inputs of
internal groups; never a frozen shortcut). A forward hook (output sites) or forward pre-hook (input
sites) registers a tensor hook, so that |a * dL/da| is reduced per channel during backward. A
BatchNorm output is not held until then (autograd drops it: the next ReLU saves its own output, an
add saves nothing); the hook keeps BN's input, which BN's backward saves anyway, and recomputes the
output from it, so calibration needs about the memory of a plain step. A forward pre-hook sums the
squared input of every Conv/Linear per input channel (Wanda/RIA). Parameter gradients accumulate in `.grad` across batches (SNIP).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from agfprune.core.version import __version__
from agfprune.core.device import autocast, autocast_dtype
from agfprune.core.distributed import SINGLE, DistContext, all_reduce_max, all_reduce_sum_tree
from agfprune.core.errors import DataError, ModelError, NumericalError, UsageError, first_line
from agfprune.core.fingerprint import model_fingerprint
from agfprune.core.progress import SILENT, Progress

from agfprune.core.calibration_hooks import _Collector
from agfprune.core.calibration_stats import (  # noqa: F401 - the statistics and their file, re-exported
    _KINDS, FORMAT_NAME, FORMAT_VERSION, TARGETS, CalibrationStats, check_matches, load_calibration, save_calibration)


def _loss(logits: torch.Tensor, labels: torch.Tensor, target: str) -> torch.Tensor:
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if target == "self":
        # KL(one-hot of the model's own top-1 || softmax) = CE against its argmax. (A soft target
        # equal to the model's own softmax would have exactly zero gradient.)
        return F.cross_entropy(logits, logits.detach().argmax(dim=1))
    if labels.numel() and (int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0):
        raise DataError(f"the data has label {int(labels.max())} but the model predicts only "
                        f"{logits.shape[1]} classes (use --calib-loss self for unlabelled data)")
    return F.cross_entropy(logits, labels)


def _accumulator_dtype(model: nn.Module) -> torch.dtype:
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return torch.float64 if first is not None and first.dtype == torch.float64 else torch.float32


def collect_statistics(model: nn.Module, loader: Iterable[Any], device: torch.device | str, *, batches: int,
                       target: str = "labels", progress: Progress = SILENT, amp: bool = False,
                       metadata: Mapping[str, Any] | None = None, micro_batch: int | None = None,
                       context: DistContext | None = None) -> CalibrationStats:
    """Run `batches` forward+backward passes (model in eval mode) and return the streamed sums.

    `micro_batch` splits each batch into chunks of at most that many images, each chunk's loss
    weighted by its share of the batch: the per-sample gradients, hence every sum, stay those of
    the whole batch (eval mode: no image depends on another), while activation memory shrinks.
    Under torchrun (`context` with several ranks) `loader` yields this rank's share, batches
    rank, rank + W, … (data.calibration_loader), and the sums are added up over the ranks at the
    end, so every rank returns what one process running all batches would (up to float order).
    The model's `.grad` fields are cleared before and after; weights are not changed.
    """
    if batches <= 0:
        raise UsageError(f"--calib-batches {batches}: must be positive")
    if target not in TARGETS:
        raise UsageError(f"--calib-loss {target!r}: expected one of {', '.join(TARGETS)}")
    if micro_batch is not None and micro_batch <= 0:
        raise UsageError(f"--micro-batch {micro_batch}: must be positive")
    context = context or SINGLE
    if batches < context.world_size:
        raise UsageError(f"--calib-batches {batches}: fewer than the {context.world_size} processes; "
                         "give every process at least one batch")
    device = torch.device(device)
    dtype = _accumulator_dtype(model)
    was_training = model.training
    model.eval()
    fingerprint = model_fingerprint(model)
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    collector: _Collector | None = None
    sites: list[Any] = []
    started = time.perf_counter()
    batch_size = 0
    iterator = iter(loader)
    owned = range(context.rank, batches, context.world_size)
    try:
        model.zero_grad(set_to_none=True)
        for position, index in enumerate(progress.track(owned, total=len(owned), description="calibrate")):
            try:
                images, labels = next(iterator)
            except StopIteration:
                raise DataError(f"--calib-batches {batches}: the data gives only {index} batch(es) of "
                                f"{batch_size or 'the requested size'}; use fewer batches or more data") from None
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            batch_size = max(batch_size, len(images))
            if collector is None:
                sites = removal_sites_of(model, images[:1])
                collector = _Collector(model, dtype, device, sites)
            _run_chunks(model, collector, images, labels, target, amp, device, index, batches, micro_batch)
            if collector.modified_in_place:
                if position > 0:
                    raise ModelError("layer outputs modified in place only after the first batch: "
                                     + ", ".join(sorted(collector.modified_in_place)))
                # redo the first batch holding copies of the outputs that later ops modify in place
                collector.clone_outputs |= collector.modified_in_place
                collector.modified_in_place.clear()
                collector.reset()
                model.zero_grad(set_to_none=True)
                _run_chunks(model, collector, images, labels, target, amp, device, index, batches, micro_batch)
            collector.stats.samples += len(images)
            collector.stats.batches += 1
        stats = collector.stats
        for name, parameter in parameters.items():
            if parameter.grad is not None:
                stats.grad[name] = parameter.grad.detach().to(dtype).clone()
        _all_reduce_sums(stats, context, device)
        batch_size = all_reduce_max(batch_size, context, device)
        if not all(bool(torch.isfinite(g).all()) for g in stats.grad.values()):
            raise NumericalError("calibration produced NaN/Inf parameter gradients")
    finally:
        if collector is not None:
            collector.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    stats = _to_cpu(collector.stats)
    stats.metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "agfprune_version": __version__,
        "fingerprint": fingerprint,
        "batches": stats.batches,
        "batch_size": batch_size,
        "samples": stats.samples,
        "target": target,
        "device": str(device),
        "amp": autocast_dtype(device, amp, fp16=False) is not None,  # bf16 only: no loss scaling here
        "dtype": str(dtype).replace("torch.", ""),
        "seconds": round(time.perf_counter() - started, 3),
        "sites": [site.key for site in sites],
        "world_size": context.world_size,
        "micro_batch": micro_batch,
        **dict(metadata or {}),
    }
    return stats


def removal_sites_of(model: nn.Module, example: torch.Tensor) -> list[Any]:
    """The tensors to tap: the removal sites of every group of the model's dependency graph."""
    from agfprune.core.pruning.groups import model_sites

    try:
        return model_sites(model, example)  # build_graph traces in eval mode and restores the mode
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise ModelError(f"cannot trace the model's dependency graph ({first_line(exc)})") from None


def _all_reduce_sums(stats: CalibrationStats, context: DistContext, device: torch.device) -> None:
    """Add every streamed sum and count (all fields but the metadata) over the ranks, in place."""
    if not context.enabled:
        return
    for name in (f.name for f in fields(stats) if f.name != "metadata"):
        setattr(stats, name, all_reduce_sum_tree(getattr(stats, name), context, device))


def _run_chunks(model: nn.Module, collector: _Collector, images: torch.Tensor, labels: torch.Tensor,
                target: str, amp: bool, device: torch.device, index: int, batches: int,
                micro_batch: int | None) -> None:
    """One batch, as one pass or as micro-batches whose losses add up to the batch's mean loss."""
    size = len(images)
    step = size if not micro_batch or micro_batch >= size else micro_batch
    for start in range(0, size, step):
        _run_batch(model, collector, images[start:start + step], labels[start:start + step], target, amp,
                   device, index, batches, scale=min(step, size - start) / size)


def _run_batch(model: nn.Module, collector: _Collector, images: torch.Tensor, labels: torch.Tensor,
               target: str, amp: bool, device: torch.device, index: int, batches: int,
               scale: float = 1.0) -> None:
    with autocast(device, amp, fp16=False):
        logits = model(images)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    loss = _loss(logits, labels, target)
    if not bool(torch.isfinite(loss)):
        raise NumericalError(f"calibration batch {index + 1}/{batches}: the loss is {loss.item()} "
                             "(check the checkpoint and the input normalisation)")
    (loss * scale if scale != 1.0 else loss).backward()
    if not collector.finite():
        raise NumericalError(f"calibration batch {index + 1}/{batches}: statistics became NaN/Inf "
                             "(gradients overflowed; try without --amp)")


def _to_cpu(stats: CalibrationStats) -> CalibrationStats:
    for kind in _KINDS:
        setattr(stats, kind, {k: v.detach().to("cpu") for k, v in getattr(stats, kind).items()})
    return stats


# deprecated name ("calibrate" also meant router thresholds and BatchNorm statistics)
calibrate = collect_statistics
