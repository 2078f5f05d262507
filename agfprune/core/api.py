"""The Python API: prune any nn.Module, save it self-described, load it onto a fresh instance.

`prune` drives the same engine as `agfprune prune` (torch-pruning's dependency graph, agfprune's
metrics, BatchNorm re-estimation); the pruned module remembers where it came from, so that `save`
can write the structure diff and the pruning record, and `load(path, model=MyNet())` can replay the
structure on a user's own class, which no model name could rebuild.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.errors import ModelError, UsageError
from agfprune.core.progress import SILENT, Progress

DEFAULT_METRIC_WITH_DATA = "agf"
DEFAULT_METRIC_WITHOUT_DATA = "magnitude-l2"
PROVENANCE_ATTR = "_agfprune_provenance"


@dataclass
class Provenance:
    """Where a pruned module came from (kept on the module, outside its state dict and submodules)."""

    base: nn.Module  # a meta-device copy of the dense model: attributes only, no weights
    arch: str | None  # a timm name that rebuilds `base` with `timm_kwargs`, else None (needs model=)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _model_class(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _meta_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta")


def _timm_identity(model: nn.Module) -> tuple[str | None, dict[str, Any]]:
    """(timm name, kwargs) that rebuild `model`'s exact structure, or (None, {}) when none does."""
    from agfprune.core.checkpoint import structure_diff
    from agfprune.core.models import create_model

    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not isinstance(arch, str):
        return None, {}
    kwargs: dict[str, Any] = {}
    if isinstance(getattr(model, "num_classes", None), int):
        kwargs["num_classes"] = model.num_classes
    patch_embed = getattr(model, "patch_embed", None)
    for attr in ("img_size", "patch_size"):
        value = getattr(patch_embed, attr, None)
        if isinstance(value, (tuple, list)):
            kwargs[attr] = list(value)
    try:
        with torch.device("meta"):
            fresh = create_model(arch, **kwargs)
        same_shapes = {k: v.shape for k, v in fresh.state_dict().items()} == \
                      {k: v.shape for k, v in model.state_dict().items()}
        if same_shapes and not structure_diff(fresh, model):
            return arch, kwargs
    except Exception:  # noqa: BLE001 - any failure to rebuild means: not rebuildable by name
        pass
    return None, {}


def _data_config_for(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, Any]:
    from agfprune.core.models.factory import resolve_model_data_config

    config = resolve_model_data_config(model, {"input_size": list(input_size)})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _batches(data: Any, data_config: dict[str, Any], batch_size: int, seed: int) -> Iterable[Any]:
    """A path (ImageFolder, .npz, synthetic:N) becomes a seeded loader; an iterable is used as is."""
    if isinstance(data, (str, Path)):
        from agfprune.core.data import LoaderOptions, build_transform, make_loader, open_dataset

        dataset = open_dataset(data, "train", build_transform(data_config, train=False))
        return make_loader(dataset, LoaderOptions(batch_size=batch_size, seed=seed, shuffle=True))
    if not isinstance(data, Iterable):
        raise UsageError(f"data: expected a path or an iterable of (images, labels) batches, got {type(data).__name__}")
    return data


class _Restartable:
    """Each pass over a one-shot iterator (a generator) continues where the last stopped."""

    def __init__(self, data: Iterable[Any]) -> None:
        self._iterator = data if isinstance(data, Iterator) else None
        self._data = data

    def __iter__(self):
        return self._iterator if self._iterator is not None else iter(self._data)


def prune(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float, metric: str | None = None,
          data: Any = None, calib_batches: int = 16, bn_batches: int | None = None, target: str = "channels",
          global_pruning: bool = False, normalizer: str | None = None, cost_aware: bool = False,
          max_layer_ratio: float | None = None, round_to: int | None = None, ignore: list[str] | None = None,
          prune_heads: bool = False, head_ratio: float | None = None, steps: int = 1,
          calib_loss: str = "labels", batch_size: int = 64, seed: int = 0,
          progress: Progress = SILENT) -> tuple[nn.Module, Any]:
    """Prune a copy of `model` structurally; returns (pruned model, PruneRecord). `model` is untouched.

    `data`: an iterable of (images, labels) batches, or a path/`synthetic:N`; with it AGF is the default
    metric and BatchNorm statistics are re-estimated on `bn_batches` (default `calib_batches`) batches. Without it
    the default is magnitude-l2 and BatchNorm statistics stay as they were.
    """
    from agfprune.core.fingerprint import model_fingerprint
    from agfprune.core.metrics import get_metric, metric_class
    from agfprune.core.models import LoadedModel
    from agfprune.core.pruning import MetricScorer, PruneOptions, prune_model, reestimate_batchnorm

    if not isinstance(model, nn.Module):
        raise UsageError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 2:
        raise UsageError("example_inputs: expected a batch tensor, e.g. torch.randn(1, 3, 224, 224)")
    options = PruneOptions(ratio=ratio, target=target, global_pruning=global_pruning, normalizer=normalizer,
                           cost_aware=cost_aware, max_layer_ratio=max_layer_ratio, round_to=round_to,
                           ignore=list(ignore or []), prune_heads=prune_heads, head_ratio=head_ratio, steps=steps)
    options.validate()
    name = metric or (DEFAULT_METRIC_WITH_DATA if data is not None else DEFAULT_METRIC_WITHOUT_DATA)
    needs_stats = bool(getattr(metric_class(name), "requires_stats", False))
    if needs_stats and data is None:
        raise UsageError(f"metric {name} needs calibration data: pass data=<loader or path>")
    if bn_batches is not None and bn_batches < 0:
        raise UsageError(f"bn_batches {bn_batches}: must be ≥ 0 (0 turns BatchNorm recalibration off)")
    input_size = tuple(int(v) for v in example_inputs.shape[1:])
    data_config = _data_config_for(model, input_size)
    arch, timm_kwargs = _timm_identity(model)
    device = next(model.parameters()).device
    loaded = LoadedModel(model=model, arch=arch or _model_class(model), timm_kwargs=timm_kwargs,
                         data_config=data_config, fingerprint=model_fingerprint(model))
    batches = _Restartable(_batches(data, data_config, batch_size, seed)) if data is not None else None

    def make_importance(current: nn.Module, step: int) -> Any:
        stats = None
        if needs_stats:
            from agfprune.core.calibration import collect_statistics

            stats = collect_statistics(current, batches, device, batches=calib_batches, target=calib_loss,
                                       progress=progress)
        return get_metric(name, stats=stats, seed=seed)

    reestimate_bn = None
    bn_count = calib_batches if bn_batches is None else bn_batches
    if batches is not None and bn_count > 0:
        def reestimate_bn(current: nn.Module) -> int:
            return reestimate_batchnorm(current, batches, device, bn_count, progress)

    was_training = model.training
    result = prune_model(loaded, MetricScorer(name, make_importance), options, input_size=input_size,
                         reestimate_bn=reestimate_bn, seed=seed, progress=progress)
    model.train(was_training)
    object.__setattr__(result.model, PROVENANCE_ATTR, Provenance(
        base=_meta_copy(model), arch=arch, timm_kwargs=timm_kwargs, data_config=data_config,
        extra={"pruning": result.record.as_dict(), "model_class": _model_class(model)}))
    return result.model, result.record


def _provenance(model: nn.Module) -> Provenance:
    found = getattr(model, PROVENANCE_ATTR, None)
    if isinstance(found, Provenance):
        return found
    from agfprune.core.models.factory import resolve_model_data_config

    arch, kwargs = _timm_identity(model)
    # timm's data config, but with the size a ViT was built for (its pretrained_cfg still says 224)
    size = resolve_model_data_config(model)["input_size"]
    return Provenance(base=_meta_copy(model), arch=arch, timm_kwargs=kwargs,
                      data_config=_data_config_for(model, tuple(size)), extra={"model_class": _model_class(model)})


def save(model: nn.Module, path: str | Path) -> str:
    """Write `model` as a self-describing agfprune .safetensors file; returns its fingerprint.

    The structure is recorded against the dense model it was pruned from, so that a reset or
    replaced classifier (same layer types) is recorded too.
    """
    from agfprune.core.checkpoint import structure_diff, write_checkpoint

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"{path}: agfprune checkpoints are .safetensors files")
    provenance = _provenance(model)
    if provenance.arch is not None:
        from agfprune.core.models import create_model

        with torch.device("meta"):
            base = create_model(provenance.arch, **provenance.timm_kwargs)
    else:
        base = provenance.base
    structure = structure_diff(base, model)
    return write_checkpoint(path, model, arch=provenance.arch, timm_kwargs=provenance.timm_kwargs,
                            data_config=provenance.data_config, structure=structure, extra=provenance.extra)


def load(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a (pruned) model from `path`: by its recorded timm name, or onto `model`, a fresh
    instance of the class it was pruned from (the recorded structure is replayed on it)."""
    from agfprune.core.checkpoint import apply_structure, load_state_strict, read_checkpoint
    from agfprune.core.models.widths import sync_width_attributes

    if model is None:
        from agfprune.core.models import load_model

        checkpoint = read_checkpoint(path)
        if not checkpoint.arch:
            made_from = checkpoint.metadata.get("model_class")
            hint = f"{made_from}()" if made_from else "an instance of the model's class"
            raise ModelError(f"{path} records no timm architecture; rebuild it with "
                             f"agfprune.load({str(path)!r}, model={hint})")
        loaded = load_model(checkpoint=path, device=device)
        object.__setattr__(loaded.model, PROVENANCE_ATTR, Provenance(
            base=_meta_copy(create_model_for(loaded)), arch=loaded.arch, timm_kwargs=loaded.timm_kwargs,
            data_config=_plain(loaded.data_config), extra=_extra(checkpoint.metadata)))
        return loaded.model
    if not isinstance(model, nn.Module):
        raise UsageError(f"model: expected a torch.nn.Module instance, got {type(model).__name__}")
    checkpoint = read_checkpoint(path)
    base = _meta_copy(model)
    apply_structure(model, checkpoint.metadata.get("structure") or {}, checkpoint.tensors)
    load_state_strict(model, checkpoint.tensors, str(path), type(model).__name__)
    data_config = checkpoint.metadata.get("data_config") or {}
    if checkpoint.metadata.get("structure") and data_config.get("input_size"):
        sync_width_attributes(model, tuple(data_config["input_size"]))
    model.eval().to(device)
    object.__setattr__(model, PROVENANCE_ATTR, Provenance(
        base=base, arch=checkpoint.arch, timm_kwargs=dict(checkpoint.metadata.get("timm_kwargs") or {}),
        data_config=dict(data_config), extra=_extra(checkpoint.metadata)))
    return model


def create_model_for(loaded: Any) -> nn.Module:
    from agfprune.core.models import create_model

    with torch.device("meta"):
        return create_model(loaded.arch, **loaded.timm_kwargs)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _extra(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: metadata[k] for k in ("pruning", "model_class", "base_checkpoint") if k in metadata}
