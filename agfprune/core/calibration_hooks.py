"""Calibration hooks: where and how a pass reduces |a * dL/da| and the squared inputs per channel.

AGF and Taylor sums are taken exactly at the removal sites of the model's dependency groups
(agfprune.core.pruning.groups). A forward hook (output sites) or forward pre-hook (input sites)
registers a tensor hook, so that |a * dL/da| is reduced per channel during backward. A BatchNorm
output is not held until then (autograd drops it: the next ReLU saves its own output, an add saves
nothing); the hook keeps BN's input, which BN's backward saves anyway, and recomputes the output from
it, so calibration needs about the memory of a plain step. A forward pre-hook sums the squared input
of every Conv/Linear per input channel (Wanda/RIA).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.layer_types import WEIGHT_TYPES
from agfprune.core.calibration_stats import CalibrationStats


def _channel_dim(tensor: torch.Tensor, channels: int, channels_last: bool) -> int | None:
    """Which dimension of `tensor` holds the `channels` (1 for NCHW, last for tokens)."""
    if tensor.ndim < 2:
        return None
    order = (tensor.ndim - 1, 1) if channels_last else (1, tensor.ndim - 1)
    for dim in order:
        if tensor.shape[dim] == channels:
            return dim
    return None


def _flatten(tensor: torch.Tensor, dim: int) -> torch.Tensor | None:
    """A (N, C, P) view for channels-first or a (N, P, C) view for channels-last tensors
    (P = all positions), so that reductions run over contiguous memory; None for (N, C)."""
    if tensor.ndim == 2:
        return None
    if dim == 1:
        return tensor.reshape(tensor.shape[0], tensor.shape[1], -1)
    if dim == tensor.ndim - 1:
        return tensor.reshape(tensor.shape[0], -1, tensor.shape[-1])
    return tensor.movedim(dim, -1).reshape(tensor.shape[0], -1, tensor.shape[dim])


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for `device_type` here, and its dtype (to recompute a norm as run)."""
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4: CUDA and CPU have separate functions
        if device_type == "cuda":
            return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


def _channel_square_sums(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of x_c^2 over samples and positions, one contiguous pass (no squared copy)."""
    flat = _flatten(x, dim)
    if flat is None:
        return torch.linalg.vector_norm(x, ord=2, dim=0).square()
    if dim == 1:
        return torch.linalg.vector_norm(flat, ord=2, dim=2).square().sum(dim=0)
    return torch.linalg.vector_norm(flat.reshape(-1, flat.shape[-1]), ord=2, dim=0).square()


class _Collector:
    """Owns the accumulators and the hooks of one calibration run."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device, sites: list[Any]) -> None:
        self.model = model
        self.dtype = dtype
        self.device = device
        self.stats = CalibrationStats()
        self.handles: list[Any] = []
        self.clone_outputs: set[str] = set()
        self.modified_in_place: set[str] = set()
        modules = dict(model.named_modules())
        input_sites = {site.module: site for site in sites if site.side == "in"}
        for site in sites:
            if site.side == "out":
                self.handles.append(modules[site.module].register_forward_hook(self._output_hook(site)))
        for name, module in modules.items():
            square_sums = isinstance(module, WEIGHT_TYPES)
            if square_sums or name in input_sites:
                self.handles.append(module.register_forward_pre_hook(
                    self._input_hook(name, module if square_sums else None, input_sites.get(name))))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def reset(self) -> None:
        self.stats = CalibrationStats()

    def _accumulate(self, target: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
        if name in target:
            target[name] += value
        else:
            target[name] = value.to(self.dtype).clone()

    def _tap(self, name: str, tensor: torch.Tensor, dim: int, side: str,
             recompute: tuple[nn.Module, torch.Tensor] | None = None) -> None:
        """Register the backward-time reduction of |a * g| for `tensor` (channel dimension `dim`).

        `recompute` = (norm, its input): hold the input, which the norm's own backward keeps anyway,
        and recompute the output when the gradient arrives, instead of holding the output, which
        autograd drops (a ReLU saves its own output, an add saves nothing)."""
        clone = side == "out" and name in self.clone_outputs
        if clone or recompute is None:
            value = tensor.detach().clone() if clone else tensor.detach()
            source = None
        else:
            norm, source = recompute[0], recompute[1].detach()
            value = None
            device_type = tensor.device.type  # the closure must not hold `tensor` itself
            amp = _autocast_state(device_type)
        held = value if value is not None else source
        version = held._version

        def on_grad(grad: torch.Tensor) -> None:
            if not clone and held._version != version:
                # modified in place after the layer (e.g. `x += shortcut`): the held value is wrong
                self.modified_in_place.add(name)
                return
            with torch.no_grad():
                if value is not None:
                    self._reduce(name, self._product(value, grad, fresh=False), dim, side)
                    return
                with torch.autocast(device_type, dtype=amp[1]) if amp[0] else contextlib.nullcontext():
                    output = norm.forward(source)  # forward(), not __call__: no hooks run again
                self._reduce(name, self._product(output, grad, fresh=True), dim, side)

        tensor.register_hook(on_grad)

    def _product(self, value: torch.Tensor, grad: torch.Tensor, fresh: bool) -> torch.Tensor:
        """a * g in the accumulator dtype (AMP: both cast first); in place in `value` when it is `fresh`
        (a temporary of ours), which spares allocating a second activation-sized buffer."""
        if value.dtype != self.dtype or grad.dtype != self.dtype:
            return value.to(self.dtype) * grad.to(self.dtype)
        return value.mul_(grad) if fresh else value * grad

    def _reduce(self, name: str, product: torch.Tensor, dim: int, side: str) -> None:
        """Add |a * g| and the per-sample |sum over positions of a * g| per channel; `product` = a * g
        is a temporary of ours, which this overwrites."""
        flat = _flatten(product, dim)
        if flat is None:  # (N, C): no positions, so both sums coincide
            absolute = taylor = product.abs().sum(dim=0)
        elif dim == 1:  # (N, C, P); abs_ after the signed sums, in place in our temporary
            taylor = flat.sum(dim=2).abs_().sum(dim=0)
            absolute = flat.abs_().sum(dim=2).sum(dim=0)  # 6-9x faster than vector_norm(ord=1) on CPU
        else:  # (N, P, C)
            taylor = flat.sum(dim=1).abs_().sum(dim=0)
            absolute = flat.reshape(-1, flat.shape[-1]).abs_().sum(dim=0)
        abs_target, taylor_target = ((self.stats.out_abs, self.stats.out_taylor) if side == "out"
                                     else (self.stats.in_abs, self.stats.in_taylor))
        self._accumulate(abs_target, name, absolute)
        self._accumulate(taylor_target, name, taylor)
        counts = self.stats.counts[side]
        counts[name] = counts.get(name, 0) + product.numel() // product.shape[dim]

    def _output_hook(self, site: Any):
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            dim = _channel_dim(output, site.channels, site.channels_last)
            if dim is not None:
                recompute = None
                if (isinstance(mod, nn.modules.batchnorm._BatchNorm) and not mod.training and inputs
                        and isinstance(inputs[0], torch.Tensor) and inputs[0].shape == output.shape):
                    recompute = (mod, inputs[0])
                self._tap(site.module, output, dim, "out", recompute)

        return hook

    def _input_hook(self, name: str, weighted: nn.Module | None, site: Any):
        """Squared-input sums of a Conv/Linear (`weighted`) and/or an input-side removal site."""
        channels = None
        if weighted is not None:
            channels = weighted.in_channels if isinstance(weighted, nn.modules.conv._ConvNd) else weighted.in_features
        tokens = isinstance(weighted, nn.Linear)

        def hook(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            x = inputs[0]
            dim = _channel_dim(x, channels, tokens) if channels is not None else None
            if dim is not None:
                with torch.no_grad():
                    squares = _channel_square_sums(x.detach().to(self.dtype), dim)
                    self._accumulate(self.stats.in_sq, name, squares)
                    counts = self.stats.counts["in_sq"]
                    counts[name] = counts.get(name, 0) + x.numel() // x.shape[dim]
            if site is not None and x.requires_grad:
                site_dim = _channel_dim(x, site.channels, site.channels_last)
                if site_dim is not None:
                    self._tap(name, x, site_dim, "in")

        return hook

    def finite(self) -> bool:
        tensors = [t for kind in ("out_abs", "out_taylor", "in_abs", "in_taylor", "in_sq")
                   for t in getattr(self.stats, kind).values()]
        if not tensors:
            return True
        return bool(torch.isfinite(torch.cat([t.reshape(-1) for t in tensors])).all())


