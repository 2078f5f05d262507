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

from agfprune.core.version import __version__
from agfprune.core.atomic import write_text_atomic
from agfprune.core.errors import ModelError, first_line
from agfprune.core.formats import Fields, check_header, dump_yaml, load_yaml, read_text
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
    read_spec_fields(spec.as_dict(), path)  # never write what read_router would refuse (e.g. threshold inf)
    text = "# agfprune router: light expert first, heavy expert where signal < threshold\n"
    text += dump_yaml(spec.as_dict())
    write_text_atomic(path, text)


def _expert(document: Fields, role: str) -> ExpertRecord:
    if not isinstance(document.document.get(role), dict):
        raise ModelError(f"{document.path}: no '{role}' expert section; not a router file?")
    entry = document.section(role)
    unknown = sorted(str(k) for k in entry.document if k not in ExpertRecord.__dataclass_fields__)
    if unknown:
        raise ModelError(f"{document.path}: field '{role}' has unknown key(s) {', '.join(unknown)}")
    return ExpertRecord(
        checkpoint=entry.string("checkpoint"), arch=entry.string("arch"), fingerprint=entry.string("fingerprint"),
        num_classes=entry.integer("num_classes", minimum=1, maximum=100_000), input_size=entry.input_size(),
        model=entry.string("model", required=False), params=entry.integer("params", minimum=0, required=False),
        macs=entry.integer("macs", minimum=0, required=False))


def _calibration_section(fields: Fields) -> dict[str, Any]:
    """The calibration record; the fields `route eval` acts on (which half, which seed) are typed."""
    section = fields.section("calibration", required=False)
    section.string("split_half", required=False, choices=("first", "second", "none"))
    section.integer("split_seed", required=False, minimum=-(2**63), maximum=2**63 - 1)
    return section.document


def read_spec_fields(document: Any, path: str | Path) -> RouterSpec:
    """A RouterSpec from a parsed router document, every field checked (ModelError naming the field)."""
    from agfprune.core.routing.calibrate import OBJECTIVES

    version = check_header(document, path, FORMAT_NAME, FORMAT_VERSION, what="router file",
                           hint=f" (expected format: {FORMAT_NAME})")
    fields = Fields(document, path)
    signal = document.get("signal")
    if not isinstance(signal, str) or signal not in signal_names():
        raise ModelError(f"{path}: field 'signal': unknown signal {signal!r} (valid: {', '.join(signal_names())})")
    threshold = fields.number("threshold")
    objective = fields.section("objective")
    objective.string("kind", choices=OBJECTIVES)
    objective.number("value")
    return RouterSpec(
        light=_expert(fields, "light"), heavy=_expert(fields, "heavy"), signal=signal, threshold=threshold, objective=objective.document,
        calibration=_calibration_section(fields), format_version=version,
        agfprune_version=str(document.get("agfprune_version", "")),
    )


def read_router(path: str | Path) -> RouterSpec:
    """Parse and validate router.yaml (one-line ModelError for anything wrong)."""
    import yaml

    text = read_text(path, "router file")
    try:
        document = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not a readable YAML router file ({first_line(exc)})") from None
    spec = read_spec_fields(document, path)
    _check_records_agree(spec.light, spec.heavy, Path(path))
    return spec


def _check_records_agree(light: ExpertRecord, heavy: ExpertRecord, path: Path) -> None:
    """Refuse, before any checkpoint is loaded, a router whose recorded experts cannot share one input
    tensor or one label set (an edited or hand-made file)."""
    check_same_labels_and_size(light.num_classes, heavy.num_classes, light.input_size, heavy.input_size,
                               f"recorded in {path}")


def expert_checkpoint_path(recorded: str, router_path: Path) -> Path:
    """A recorded expert path; relative ones are relative to the router file's folder."""
    path = Path(recorded)
    return path if path.is_absolute() else (router_path.parent / path)


def _load_checked(record: ExpertRecord, role: str, router_path: Path, override: Path | None,
                  device: torch.device | str) -> LoadedModel:
    checkpoint = override or expert_checkpoint_path(record.checkpoint, router_path)
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
