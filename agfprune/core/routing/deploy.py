"""From router.yaml to a running (or exported) Cascade."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from agfprune.core.atomic import check_outputs
from agfprune.core.export import export_metadata
from agfprune.core.errors import UsageError
from agfprune.core.routing.cascade import Cascade, make_cascade, save_torchscript, script_cascade
from agfprune.core.routing.router_file import expert_checkpoint_path, load_router_experts, read_router
from agfprune.core.routing.signals import SIGNALS, is_dynamic


def load_router(path: str | Path, device: torch.device | str = "cpu", light: Path | None = None,
                heavy: Path | None = None) -> Cascade:
    """The Cascade described by router.yaml, experts loaded and fingerprint-checked, in eval mode."""
    spec = read_router(path)
    pair = load_router_experts(spec, path, device, light, heavy)
    return make_cascade(pair.light.model, pair.heavy.model, spec.signal, spec.threshold).to(device).eval()


@dataclass
class ExportResult:
    """What `route export` wrote."""

    path: str
    signal: str
    threshold: float
    input_size: list[int]
    bytes: int
    verified: bool


def export_router(path: str | Path, out: str | Path, device: torch.device | str = "cpu",
                  light: Path | None = None, heavy: Path | None = None) -> ExportResult:
    """Compile the router's Cascade to TorchScript, check it against the eager one, write `out`."""
    spec = read_router(path)
    check_outputs({"--out": out}, {"--router": path, "--light": light, "--heavy": heavy,
                                   "the router's light expert": expert_checkpoint_path(spec.light.checkpoint, Path(path)),
                                   "the router's heavy expert": expert_checkpoint_path(spec.heavy.checkpoint, Path(path))})
    if is_dynamic(spec.signal):
        raise UsageError(f"{path}: signal {spec.signal!r} needs the light expert's input gradients, which an "
                         "exported TorchScript cascade cannot compute; re-calibrate with a zero-cost signal "
                         f"({', '.join(sorted(SIGNALS))}) to export")
    cascade = load_router(path, device, light, heavy)
    input_size = tuple(spec.light.input_size)
    scripted = script_cascade(cascade, input_size)
    metadata = export_metadata(f"cascade({spec.light.arch}, {spec.heavy.arch})", spec.light.fingerprint,
                               light_fingerprint=spec.light.fingerprint,
                               heavy_fingerprint=spec.heavy.fingerprint, router=str(path), signal=spec.signal,
                               threshold=spec.threshold, input_size=list(input_size))
    save_torchscript(scripted, out, metadata)
    return ExportResult(str(out), spec.signal, spec.threshold, list(input_size), Path(out).stat().st_size, True)
