"""One door to models: a timm name, a checkpoint, or both (checkpoint metadata wins on structure)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.checkpoint import CheckpointFile, apply_structure, load_state_strict, read_checkpoint
from agfprune.core.errors import ModelError, UsageError
from agfprune.core.fingerprint import model_fingerprint
from agfprune.core.models.widths import sync_width_attributes


DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass
class LoadedModel:
    """A ready model plus everything needed to rebuild it and to prepare its inputs."""

    model: nn.Module
    arch: str
    timm_kwargs: dict[str, Any]
    data_config: dict[str, Any]
    fingerprint: str
    checkpoint: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or self.data_config.get("num_classes", 0))

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.data_config["input_size"])  # type: ignore[return-value]

    def check_input_size(self, config: dict[str, Any]) -> None:
        """UsageError when `config`'s input size is one this model cannot take: a timm ViT (or kin)
        built for a fixed size, whose position embeddings fit that size only."""
        fixed = fixed_input_size(self.model)
        height, width = (int(v) for v in config["input_size"][1:])
        if fixed is not None and (height, width) != fixed:
            raise UsageError(
                f"input size {height}×{width} (--img-size or the calibration file): {self.checkpoint or self.arch} "
                f"takes {fixed[0]}×{fixed[1]} only (fixed position embeddings); give --img-size {fixed[0]} or "
                f"build the model at {height} px (timm.create_model(..., img_size={height}), then agfprune.save)")


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) that a model accepts exclusively (timm patch embeddings with a strict size and no
    dynamic_img_size), or None when any size works."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not getattr(patch_embed, "strict_img_size", False):
        return None
    if getattr(model, "dynamic_img_size", False):
        return None
    return _built_input_size(model)


def _suggest(arch: str) -> str:
    import timm

    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else "; see `timm.list_models()` for names"


HUB_HOST = "huggingface.co"
HUB_CONNECT_TIMEOUT_S = 3.0


def _weights_cached(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on it
        return False
    return any(isinstance(try_to_load_from_cache(hub_id, name), str)
               for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def check_pretrained_reachable(arch: str) -> None:
    """Fail in one line within seconds when hub weights are neither cached nor downloadable, instead of
    letting the hub client retry (and log each retry) for minutes."""
    import os
    import socket

    import timm

    config = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
    hub_id = getattr(config, "hf_hub_id", None)
    if not hub_id or _weights_cached(hub_id):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelError(f"--pretrained: {arch} weights are not cached and HF_HUB_OFFLINE is set; "
                         "use --checkpoint with a local file")
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # a proxy decides reachability; the hub client's own error will say what failed
    try:
        socket.create_connection((HUB_HOST, 443), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ModelError(f"--pretrained: cannot reach {HUB_HOST} to download {arch} weights ({exc.strerror or exc}) "
                         "and they are not cached; use --checkpoint with a local file") from None


def create_model(arch: str, pretrained: bool = False, **timm_kwargs: Any) -> nn.Module:
    """timm.create_model with agfprune's models registered and errors turned into one line.

    agfprune's own models are built without importing timm (a second of start-up saved)."""
    from agfprune.core.models import cifar_resnet

    entrypoint = cifar_resnet.MODELS.get(arch) if not pretrained else None
    if entrypoint is None:
        import timm

        cifar_resnet.register_in_timm()
        if not timm.is_model(arch):
            raise ModelError(f"unknown model {arch!r}{_suggest(arch)}")
        entrypoint = partial(timm.create_model, arch)
    if pretrained:
        check_pretrained_reachable(arch)
    try:
        return entrypoint(pretrained=pretrained, **timm_kwargs)
    except TypeError as exc:
        raise ModelError(f"model {arch}: invalid arguments {timm_kwargs} ({exc})") from None
    except Exception as exc:  # timm/hub raise many types when weights cannot be fetched
        if pretrained:
            raise ModelError(f"model {arch}: pretrained weights unavailable "
                             f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                             "use --checkpoint with a local file") from None
        raise


def check_model_size(arch: str, kwargs: dict[str, Any], source: Any) -> None:
    """Refuse (ModelError) kwargs that would build a model over MAX_PARAMS parameters, before any
    memory is allocated: a transformer's size is estimated from depth and width, anything else is
    built on the meta device (no storage) and counted."""
    from agfprune.core.formats import MAX_PARAMS

    depth, width = kwargs.get("depth"), kwargs.get("embed_dim")
    estimate = 12 * depth * width * width if isinstance(depth, int) and isinstance(width, int) else 0
    if estimate <= MAX_PARAMS:
        try:
            with torch.device("meta"):
                estimate = sum(p.numel() for p in create_model(arch, **kwargs).parameters())
        except Exception:  # noqa: BLE001 - the real build below reports what is wrong
            return
    if estimate > MAX_PARAMS:
        raise ModelError(f"{source}: timm_kwargs {kwargs} would build a {arch} of about {estimate:,} parameters, "
                         f"more than agfprune builds ({MAX_PARAMS:,}); the metadata is damaged or edited")


def _classifier_weight_key(model: nn.Module) -> str | None:
    config = getattr(model, "pretrained_cfg", None) or {}
    name = config.get("classifier")
    if name is None and hasattr(model, "get_classifier"):
        classifier = model.get_classifier()
        name = next((n for n, m in model.named_modules() if m is classifier), None)
    if isinstance(name, (list, tuple)):
        name = name[0]
    return f"{name}.weight" if name else None


def _infer_num_classes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> int | None:
    key = _classifier_weight_key(model)
    if key and key in tensors and key in model.state_dict():
        if tensors[key].shape[0] != model.state_dict()[key].shape[0]:
            return int(tensors[key].shape[0])
    return None


def _built_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size a model was actually built for, where it records one (timm ViTs and kin)."""
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _resolve_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's resolve_data_config, or for agfprune's own models the same fields read directly from
    their pretrained_cfg (so that loading a CIFAR ResNet does not import timm)."""
    from agfprune.core.models.cifar_resnet import CifarResNet

    if isinstance(model, CifarResNet):
        return {key: model.pretrained_cfg[key] for key in DATA_CONFIG_KEYS}
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def resolve_model_data_config(model: nn.Module, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """timm's data config of `model`, updated with checkpoint metadata or user overrides."""
    config = dict(_resolve_data_config(model))
    actual = _built_input_size(model)
    if actual is not None:  # e.g. a ViT created with img_size=32: its pretrained cfg still says 224
        config["input_size"] = (config["input_size"][0], *actual)
    for key, value in (overrides or {}).items():
        if value is not None:
            config[key] = tuple(value) if isinstance(value, list) else value
    config["num_classes"] = int(getattr(model, "num_classes", config.get("num_classes", 0)) or 0)
    return config


def load_model(arch: str | None = None, checkpoint: str | Path | None = None, *,
               pretrained: bool = False, timm_kwargs: dict[str, Any] | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Build a model from a timm name and/or a checkpoint, honouring checkpoint metadata.

    Metadata `timm_model`/`arch`, `timm_kwargs`, `data_config` and (for pruned checkpoints)
    `structure` decide the architecture; `arch` must agree with the metadata when both are given.
    """
    ckpt: CheckpointFile | None = read_checkpoint(checkpoint) if checkpoint else None
    recorded = ckpt.arch if ckpt else None
    if arch and recorded and arch != recorded:
        raise ModelError(f"{checkpoint} was made for model {recorded}, not {arch} "
                         "(drop --model to use the checkpoint's own architecture)")
    arch = arch or recorded
    if not arch:
        if ckpt:
            raise UsageError(f"{checkpoint} records no architecture; pass --model NAME")
        raise UsageError("give --model NAME and/or --checkpoint PATH")
    kwargs = dict(ckpt.metadata.get("timm_kwargs") or {}) if ckpt else {}
    kwargs.update(timm_kwargs or {})
    if kwargs:  # recorded in a file: bounded per key when read, and here as a whole
        check_model_size(arch, kwargs, checkpoint or "the recorded timm_kwargs")
    model = create_model(arch, pretrained=pretrained and ckpt is None, **kwargs)
    if ckpt:
        inferred = None if "num_classes" in kwargs else _infer_num_classes(model, ckpt.tensors)
        if inferred:
            kwargs["num_classes"] = inferred
            model = create_model(arch, **kwargs)
        structure = ckpt.metadata.get("structure") or {}
        if structure:
            apply_structure(model, structure, ckpt.tensors)
        load_state_strict(model, ckpt.tensors, str(checkpoint), arch)
    data_config = resolve_model_data_config(model, ckpt.metadata.get("data_config") if ckpt else None)
    if ckpt and ckpt.metadata.get("structure"):
        sync_width_attributes(model, tuple(data_config["input_size"]))
    model.eval()
    model.to(device)
    return LoadedModel(
        model=model,
        arch=arch,
        timm_kwargs=kwargs,
        data_config=data_config,
        fingerprint=model_fingerprint(model),
        checkpoint=Path(checkpoint) if checkpoint else None,
        metadata=ckpt.metadata if ckpt else {},
    )
