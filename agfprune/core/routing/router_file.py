"""router.yaml: everything needed to rebuild a cascade, and to notice when its experts changed.

Records both experts' checkpoints, architectures and weight fingerprints, the signal, threshold
and objective, the calibration data split and numbers, and the versions that wrote it. Loading
re-checks the fingerprints, because a threshold calibrated for one pair of weights means nothing
for another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agfprune import __version__
from agfprune.core.atomic import write_text_atomic
from agfprune.core.errors import ModelError, first_line
from agfprune.core.models import LoadedModel
from agfprune.core.routing.experts import (ExpertPair, ExpertSource, check_compatible,
                                          check_same_labels_and_size, load_expert)
from agfprune.core.routing.signals import signal_names

FORMAT_NAME = "agfprune-router"
FORMAT_VERSION = 1


@dataclass
class ExpertRecord:
    """One expert as the router knows it."""

    checkpoint: str
    arch: str
    fingerprint: str
    num_classes: int
    input_size: list[int]
    model: str | None = None  # the --light-model/--heavy-model name given for plain checkpoints
    params: int | None = None
    macs: int | None = None

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, model: str | None, params: int | None = None,
                    macs: int | None = None, router_dir: Path | None = None) -> "ExpertRecord":
        return cls(checkpoint=recorded_path(loaded.checkpoint, router_dir) if loaded.checkpoint else "",
                   arch=loaded.arch, fingerprint=loaded.fingerprint, num_classes=loaded.num_classes,
                   input_size=list(loaded.input_size), model=model, params=params, macs=macs)


def recorded_path(checkpoint: str | Path, router_dir: Path | None) -> str:
    """How router.yaml records a checkpoint: relative to the router's folder when the checkpoint lies
    inside it (so the folder can move as a whole), absolute otherwise (so the router can move alone)."""
    resolved = Path(checkpoint).resolve()
    if router_dir is not None:
        try:
            return resolved.relative_to(Path(router_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(resolved)


@dataclass
class RouterSpec:
    """The content of router.yaml."""

    light: ExpertRecord
    heavy: ExpertRecord
    signal: str
    threshold: float
    objective: dict[str, Any]
    calibration: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    agfprune_version: str = __version__

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        ordered = {key: document.pop(key) for key in ("format", "format_version", "agfprune_version")}
        ordered.update(document)
        return ordered


def write_router(path: str | Path, spec: RouterSpec) -> None:
    """Write router.yaml atomically."""
    import yaml

    text = "# agfprune router: light expert first, heavy expert where signal < threshold\n"
    text += yaml.safe_dump(spec.as_dict(), sort_keys=False, default_flow_style=False)
    write_text_atomic(path, text)


def _expert(document: dict[str, Any], role: str, path: Path) -> ExpertRecord:
    entry = document.get(role)
    if not isinstance(entry, dict):
        raise ModelError(f"{path}: no '{role}' expert section; not a router file?")
    try:
        return ExpertRecord(**entry)
    except TypeError as exc:
        raise ModelError(f"{path}: '{role}' section is malformed ({exc})") from None


def read_router(path: str | Path) -> RouterSpec:
    """Parse and validate router.yaml (one-line ModelError for anything wrong)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"router file not found: {path}")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{path}: not a readable YAML router file ({first_line(exc)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ModelError(f"{path}: not an agfprune router file (expected format: {FORMAT_NAME})")
    if int(document.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(f"{path}: router format version {document['format_version']} is newer than this "
                         f"agfprune supports ({FORMAT_VERSION}); upgrade agfprune")
    signal = document.get("signal")
    if signal not in signal_names():
        raise ModelError(f"{path}: unknown signal {signal!r} (valid: {', '.join(signal_names())})")
    threshold = document.get("threshold")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise ModelError(f"{path}: threshold must be a number, got {threshold!r}")
    light, heavy = _expert(document, "light", path), _expert(document, "heavy", path)
    _check_records_agree(light, heavy, path)
    return RouterSpec(
        light=light, heavy=heavy,
        signal=signal, threshold=float(threshold), objective=dict(document.get("objective") or {}),
        calibration=dict(document.get("calibration") or {}),
        format_version=int(document.get("format_version", FORMAT_VERSION)),
        agfprune_version=str(document.get("agfprune_version", "")),
    )


def _check_records_agree(light: ExpertRecord, heavy: ExpertRecord, path: Path) -> None:
    """Refuse, before any checkpoint is loaded, a router whose recorded experts cannot share one input
    tensor or one label set (an edited or hand-made file)."""
    check_same_labels_and_size(light.num_classes, heavy.num_classes, light.input_size, heavy.input_size,
                               f"recorded in {path}")


def _checkpoint_path(recorded: str, router_path: Path) -> Path:
    path = Path(recorded)
    return path if path.is_absolute() else (router_path.parent / path)


def _load_checked(record: ExpertRecord, role: str, router_path: Path, override: Path | None,
                  device: torch.device | str) -> LoadedModel:
    checkpoint = override or _checkpoint_path(record.checkpoint, router_path)
    loaded = load_expert(ExpertSource(checkpoint, record.model), device)
    if loaded.fingerprint != record.fingerprint:
        raise ModelError(
            f"{router_path}: {role} expert {checkpoint} has weights fingerprint {loaded.fingerprint}, but the "
            f"router was calibrated with {record.fingerprint} ({record.checkpoint}); the checkpoint was "
            f"replaced or retrained, so re-run `agfprune route calibrate` or give the original file")
    return loaded


def load_router_experts(spec: RouterSpec, router_path: str | Path, device: torch.device | str,
                        light: Path | None = None, heavy: Path | None = None) -> ExpertPair:
    """Load the recorded experts (or the given replacements) and verify their fingerprints."""
    router_path = Path(router_path)
    pair = ExpertPair(_load_checked(spec.light, "light", router_path, light, device),
                      _load_checked(spec.heavy, "heavy", router_path, heavy, device))
    check_compatible(pair.light, pair.heavy)
    return pair
