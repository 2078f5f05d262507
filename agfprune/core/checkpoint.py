"""Reading and writing checkpoints without executing code.

Writes safetensors with JSON metadata that is enough to rebuild a pruned architecture: the base
timm model name and kwargs, plus every module attribute that pruning changed (tensor shapes come
from the tensors themselves). Reads safetensors, or .pth/.pt/.th with `weights_only=True`.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.version import __version__
from agfprune.core.atomic import atomic_path
from agfprune.core.errors import ModelError, first_line
from agfprune.core.formats import (Fields, check_data_config, check_header, check_timm_kwargs,
                                   require_regular_file, utf8_path)
from agfprune.core.fingerprint import METADATA_FINGERPRINT_KEY, metadata_fingerprint, state_fingerprint

FORMAT_NAME = "agfprune-checkpoint"
FORMAT_VERSION = 1
TORCH_SUFFIXES = {".pth", ".pt", ".th", ".bin", ".ckpt"}
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
KEY_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class CheckpointFile:
    """Tensors and decoded metadata of one checkpoint file."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    stored_metadata: dict[str, str] = field(default_factory=dict)  # as in the file, before JSON decoding

    @property
    def arch(self) -> str | None:
        return self.metadata.get("timm_model") or self.metadata.get("arch")

    @property
    def is_agfprune(self) -> bool:
        return self.metadata.get("format") == FORMAT_NAME


def decode_metadata(raw: dict[str, str] | None) -> dict[str, Any]:
    """String metadata (safetensors, ONNX) with JSON values decoded; other strings kept as they are."""
    decoded: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, ValueError):
            decoded[key] = value
    return decoded


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cleaned = {}
    for key, value in state.items():
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def _read_safetensors(path: Path) -> CheckpointFile:
    from safetensors import SafetensorError, safe_open

    try:
        with utf8_path(path) as name, safe_open(name, framework="pt", device="cpu") as handle:
            stored = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    return CheckpointFile(path, _strip_prefixes(tensors), decode_metadata(stored), stored)


def _read_torch(path: Path) -> CheckpointFile:
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needed = re.search(r"\bGLOBAL ([\w.]+)", str(exc))  # the class or function it would import
        if needed:
            raise ModelError(f"{path}: refused, unpickling it would run code ({needed.group(1)}); "
                             "re-save it as a plain state_dict or safetensors") from None
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({_unpickling_detail(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - damaged files raise many types (EOF, zip, index, unicode...)
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    metadata: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                metadata = {k: v for k, v in obj.items() if isinstance(v, (int, float, str))}
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: no state dict of tensors found (expected a dict of tensors, "
                         f"or one under {', '.join(WRAPPER_KEYS)})")
    return CheckpointFile(path, _strip_prefixes(dict(obj)), metadata)


def _first_line(exc: BaseException) -> str:
    return first_line(exc)


def _unpickling_detail(exc: BaseException) -> str:
    """torch's weights-only error is a paragraph of advice; keep the line that says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if "Unsupported" in line or "WeightsUnpickler error" in line]
    return (specific or lines or [type(exc).__name__])[0][:200]


def read_checkpoint(path: str | Path) -> CheckpointFile:
    """Read a checkpoint's tensors and metadata; verify agfprune checkpoints' fingerprints."""
    path = require_regular_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        checkpoint = _read_safetensors(path)
    elif path.suffix in TORCH_SUFFIXES:
        checkpoint = _read_torch(path)
    else:
        raise ModelError(f"{path}: unknown checkpoint type {path.suffix!r} "
                         f"(expected .safetensors or {', '.join(sorted(TORCH_SUFFIXES))})")
    check_metadata(checkpoint)
    return checkpoint


def check_metadata(checkpoint: CheckpointFile) -> None:
    """Refuse (ModelError naming the field) metadata that is damaged, edited, or asks for absurd sizes.

    agfprune checkpoints: header, metadata fingerprint (when recorded: every file since it was added),
    tensor fingerprint, structure. Any checkpoint: the architecture name, `timm_kwargs` (known keys,
    bounded sizes) and `data_config`, because the model is built from them before any weight is read.
    """
    path, metadata = checkpoint.path, checkpoint.metadata
    fields = Fields(metadata, path)
    if checkpoint.is_agfprune:
        check_header(metadata, path, FORMAT_NAME, FORMAT_VERSION, what="checkpoint")
        recorded = metadata.get(METADATA_FINGERPRINT_KEY)
        if recorded is not None:
            actual = metadata_fingerprint(checkpoint.stored_metadata)
            if actual != recorded:
                raise ModelError(f"{path}: metadata does not match the recorded metadata fingerprint "
                                 f"({actual} != {recorded}); the file was modified or damaged")
        expected = fields.string("fingerprint", required=False)
        if expected:
            actual = state_fingerprint(checkpoint.tensors)
            if actual != expected:
                raise ModelError(f"{path}: tensors do not match the recorded fingerprint "
                                 f"({actual} != {expected}); the file was modified or damaged")
        structure = fields.section("structure", required=False)
        for module in structure.document:
            changes = structure.section(str(module))
            for attr, value in changes.document.items():
                plain = isinstance(value, _SCALAR_TYPES) or (
                    isinstance(value, list) and all(isinstance(v, (int, float)) for v in value))
                if not plain or str(attr).startswith("_"):
                    raise changes.fail(str(attr), "a number, string or list of numbers", value)
    for key in ("timm_model", "arch"):
        fields.string(key, required=False)
    if metadata.get("timm_kwargs") is not None:
        check_timm_kwargs(metadata["timm_kwargs"], path)
    if metadata.get("data_config") is not None:
        check_data_config(metadata["data_config"], path)


_SCALAR_TYPES = (int, float, bool, str, type(None))


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    attributes = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, _SCALAR_TYPES):
            attributes[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
            attributes[key] = list(value)
    return attributes


def structure_diff(base: nn.Module, changed: nn.Module) -> dict[str, dict[str, Any]]:
    """Module attributes (ints, floats, shapes) of `changed` that differ from `base`."""
    base_modules = dict(base.named_modules())
    diff: dict[str, dict[str, Any]] = {}
    for name, module in changed.named_modules():
        original = base_modules.get(name)
        if original is None or type(original) is not type(module):
            raise ModelError(f"cannot record structure: module {name!r} was added or replaced")
        before, after = _plain_attributes(original), _plain_attributes(module)
        changes = {k: v for k, v in after.items() if before.get(k, object()) != v}
        if changes:
            diff[name] = changes
    return diff


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]],
                    tensors: dict[str, torch.Tensor]) -> None:
    """Reshape a freshly built base model so that it has the recorded (pruned) structure."""
    for module_name, changes in structure.items():
        try:
            module = model.get_submodule(module_name) if module_name else model
        except AttributeError:
            raise ModelError(f"checkpoint structure names module {module_name!r}, "
                             "which the base model does not have") from None
        for attr, value in changes.items():
            if isinstance(getattr(module, attr, None), tuple) and isinstance(value, list):
                value = tuple(value)
            setattr(module, attr, value)
    current = model.state_dict()
    for name, tensor in tensors.items():
        if name not in current or current[name].shape == tensor.shape:
            continue
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        old = getattr(module, attr)
        empty = torch.empty(tensor.shape, dtype=old.dtype)
        if isinstance(old, nn.Parameter):
            setattr(module, attr, nn.Parameter(empty, requires_grad=old.requires_grad))
        else:
            module._buffers[attr] = empty


def _listed(label: str, items: list[str], sep: str = ", ") -> str:
    shown = sep.join(items[:3]) + (sep + "..." if len(items) > 3 else "")
    return f"{len(items)} {label} ({shown})"


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str,
                      arch: str) -> None:
    """load_state_dict with a one-line error listing missing, unexpected and misshapen keys."""
    expected = model.state_dict()
    mismatched = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in tensors and tensors[k].shape != v.shape]
    missing: list[str] = []
    unexpected = [k for k in tensors if k not in expected]
    if not mismatched:
        # strict=False so that module hooks (e.g. the option-A shortcut) can fill in keys first
        result = model.load_state_dict(tensors, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    problems = []
    if missing:
        problems.append(_listed("missing keys", missing))
    if unexpected:
        problems.append(_listed("unexpected keys", unexpected))
    if mismatched:
        problems.append(_listed("shape mismatches", mismatched, "; "))
    if problems:
        raise ModelError(f"{source} does not fit model {arch}: " + "; ".join(problems))


def _plain_string(value: Any) -> bool:
    """A string stored as-is: one the JSON decoder on the read side cannot mistake for a number
    (a hex fingerprint such as "12e45..." parses as a float, so it is stored JSON-quoted)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")  # a path that is not UTF-8 is stored JSON-escaped, and read back exactly
        json.loads(value)
    except UnicodeEncodeError:
        return False
    except ValueError:
        return True
    return False


def write_checkpoint(path: str | Path, model: nn.Module, *, arch: str, timm_kwargs: dict[str, Any],
                     data_config: dict[str, Any], structure: dict[str, dict[str, Any]] | None = None,
                     extra: dict[str, Any] | None = None) -> str:
    """Save `model` as an agfprune safetensors checkpoint (atomically); return its fingerprint."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    fingerprint = state_fingerprint(tensors)
    metadata: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "agfprune_version": __version__,
        "timm_model": arch,
        "timm_kwargs": timm_kwargs,
        "data_config": data_config,
        "structure": structure or {},
        "fingerprint": fingerprint,
    }
    for key, value in (extra or {}).items():
        metadata.setdefault(key, value)
    encoded = {k: v if _plain_string(v) else json.dumps(v, sort_keys=True) for k, v in metadata.items()
               if k != METADATA_FINGERPRINT_KEY}
    encoded[METADATA_FINGERPRINT_KEY] = json.dumps(metadata_fingerprint(encoded))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=encoded)
    return fingerprint
