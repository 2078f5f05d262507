"""The two experts of a router: loading them, checking they fit together, and running both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from agfprune.core.data import LoaderOptions, build_transform, make_loader, open_dataset, split_half
from agfprune.core.errors import ModelError
from agfprune.core.evaluate import _check_labels
from agfprune.core.models import LoadedModel, load_model
from agfprune.core.progress import SILENT, Progress


@dataclass
class ExpertSource:
    """Where an expert comes from: a checkpoint, and a timm name for plain checkpoints without metadata."""

    checkpoint: Path
    model: str | None = None


@dataclass
class ExpertPair:
    """Light and heavy experts, loaded, known to accept the same inputs and predict the same classes."""

    light: LoadedModel
    heavy: LoadedModel

    @property
    def data_config(self) -> dict[str, Any]:
        return self.light.data_config

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.light.input_size


def _close(a: Any, b: Any) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))


def check_same_labels_and_size(light_classes: int, heavy_classes: int, light_size: Any, heavy_size: Any,
                               where: str) -> None:
    """One-line ModelError when two experts differ in class count or input size (`where` names them)."""
    if light_classes != heavy_classes:
        raise ModelError(f"experts predict different class counts ({light_classes} vs "
                         f"{heavy_classes}, {where}); both must classify the same labels")
    if list(light_size) != list(heavy_size):
        raise ModelError(f"experts expect different input sizes ({'x'.join(map(str, light_size))} vs "
                         f"{'x'.join(map(str, heavy_size))}, {where}); the cascade feeds both one tensor")


def check_compatible(light: LoadedModel, heavy: LoadedModel) -> None:
    """One-line ModelError when the experts cannot share one input tensor or one label set."""
    where = f"light {light.checkpoint or light.arch} vs heavy {heavy.checkpoint or heavy.arch}"
    check_same_labels_and_size(light.num_classes, heavy.num_classes, light.input_size, heavy.input_size, where)
    for key in ("mean", "std"):
        if not _close(light.data_config[key], heavy.data_config[key]):
            raise ModelError(f"experts normalise inputs differently ({key} {tuple(light.data_config[key])} vs "
                             f"{tuple(heavy.data_config[key])}, {where}); the cascade feeds both one tensor")


def load_expert(source: ExpertSource, device: torch.device | str) -> LoadedModel:
    return load_model(source.model, source.checkpoint, device=device)


def load_experts(light: ExpertSource, heavy: ExpertSource, device: torch.device | str) -> ExpertPair:
    """Load both experts (eval mode) and check that they fit together."""
    pair = ExpertPair(load_expert(light, device), load_expert(heavy, device))
    check_compatible(pair.light, pair.heavy)
    return pair


def routing_loader(data: str | Path, half: str, split_seed: int, data_config: dict[str, Any],
                   options: LoaderOptions, device: torch.device) -> DataLoader:
    """Eval-transform loader over one seeded half (or all) of the val split of `data`."""
    dataset = open_dataset(data, "val", build_transform(data_config, train=False), options.skip_bad_images)
    return make_loader(split_half(dataset, half, split_seed), options, device)


@dataclass
class RoutingLogits:
    """Both experts' logits (float32, CPU) and the labels over a data set, plus the scores of any
    dynamic signals, which need the light model itself and so are computed during the same pass."""

    light: torch.Tensor
    heavy: torch.Tensor
    labels: torch.Tensor
    dynamic: dict[str, torch.Tensor]

    def scores(self, signal: str) -> torch.Tensor:
        """Signal `signal` of every sample (float32, CPU)."""
        from agfprune.core.routing.signals import compute_signal, is_dynamic

        if is_dynamic(signal):
            return self.dynamic[signal]
        return compute_signal(signal, self.light).float().cpu()


@torch.no_grad()
def collect_logits(pair: ExpertPair, loader: DataLoader, device: torch.device, progress: Progress = SILENT,
                   dynamic: tuple[str, ...] | list[str] = ()) -> RoutingLogits:
    """Light and heavy logits and labels over a loader, both experts per batch; with `dynamic`
    signal names, the light pass also computes those signals (a backward pass each)."""
    from agfprune.core.routing.signals import dynamic_scores

    light_all, heavy_all, labels_all = [], [], []
    dynamic_all: dict[str, list[torch.Tensor]] = {name: [] for name in dynamic}
    for images, labels in progress.track(loader, total=len(loader), description="light + heavy"):
        images = images.to(device)
        light_logits = None
        for name in dynamic:
            light_logits, scores = dynamic_scores(name, pair.light.model, images)
            dynamic_all[name].append(scores.float().cpu())
        if light_logits is None:
            light_logits = pair.light.model(images)
        light_all.append(light_logits.float().cpu())
        heavy_all.append(pair.heavy.model(images).float().cpu())
        labels_all.append(labels)
    labels = torch.cat(labels_all)
    light_logits = torch.cat(light_all)
    _check_labels(labels, light_logits.shape[1])
    return RoutingLogits(light_logits, torch.cat(heavy_all), labels,
                         {name: torch.cat(values) for name, values in dynamic_all.items()})
