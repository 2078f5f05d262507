"""Calibration statistics and their file: the streaming sums one pass collects, the quantities the
metrics read from them (AGF, Taylor, input norms, mean gradients), and the one writer/reader of the
calibration file (safetensors + a checked JSON header; `check_matches` ties a file to a model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from agfprune.core.atomic import atomic_path
from agfprune.core.errors import ModelError, first_line
from agfprune.core.fingerprint import model_fingerprint

FORMAT_NAME = "agfprune-calibration"
# 2: AGF/Taylor at removal sites only (version 1 read every layer output, the frozen shortcut too)
FORMAT_VERSION = 2
TARGETS = ("labels", "self")
_KINDS = ("out_abs", "out_taylor", "in_abs", "in_taylor", "in_sq", "grad")


@dataclass
class CalibrationStats:
    """Streaming sums per module name (and per parameter name for gradients), plus provenance.

    out_abs[m][c]    = sum over samples and positions of |a_c * dL/da_c| (a = output of module m)
    out_taylor[m][c] = sum over samples of |sum over positions of a_c * dL/da_c|
    in_abs/in_taylor = the same for the *input* of attention projections (head features)
    in_sq[m][c]      = sum over samples and positions of x_c^2 (x = input of Conv/Linear m)
    grad[p]          = sum over batches of dL/dp (L = the batch's mean loss)
    counts[kind][m]  = number of (sample, position) pairs summed for that entry
    """

    out_abs: dict[str, torch.Tensor] = field(default_factory=dict)
    out_taylor: dict[str, torch.Tensor] = field(default_factory=dict)
    in_abs: dict[str, torch.Tensor] = field(default_factory=dict)
    in_taylor: dict[str, torch.Tensor] = field(default_factory=dict)
    in_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    grad: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {"out": {}, "in": {}, "in_sq": {}})
    samples: int = 0
    batches: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- derived quantities the metrics read -------------------------------------------------
    def agf(self, module: str, side: str = "out") -> torch.Tensor | None:
        """Mean |a * dL/da| per channel over all samples and positions (the AGF utility)."""
        sums = self.out_abs if side == "out" else self.in_abs
        if module not in sums:
            return None
        return sums[module] / max(1, self.counts["out" if side == "out" else "in"].get(module, 1))

    def taylor(self, module: str, side: str = "out") -> torch.Tensor | None:
        """Mean over samples of |sum over positions of a * dL/da| (Molchanov et al. 2017)."""
        sums = self.out_taylor if side == "out" else self.in_taylor
        if module not in sums:
            return None
        return sums[module] / max(1, self.samples)

    def input_norm(self, module: str) -> torch.Tensor | None:
        """||X_c||_2 of each input channel over every calibration sample and position (Wanda)."""
        if module not in self.in_sq:
            return None
        return self.in_sq[module].clamp_min(0).sqrt()

    def mean_grad(self, parameter: str) -> torch.Tensor | None:
        """dL/dp averaged over the calibration batches."""
        if parameter not in self.grad:
            return None
        return self.grad[parameter] / max(1, self.batches)

    @property
    def fingerprint(self) -> str | None:
        return self.metadata.get("fingerprint")


def save_calibration(path: str | Path, stats: CalibrationStats) -> None:
    """Write the sums as safetensors (keys `kind/name`) with JSON metadata, atomically."""
    from safetensors.torch import save_file

    tensors = {f"{kind}/{name}": value.contiguous()
               for kind in _KINDS for name, value in getattr(stats, kind).items()}
    metadata = dict(stats.metadata)
    metadata.update({"counts": stats.counts, "samples": stats.samples, "batches": stats.batches})
    metadata.setdefault("format", FORMAT_NAME)
    metadata.setdefault("format_version", FORMAT_VERSION)
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=encoded)


def load_calibration(path: str | Path) -> CalibrationStats:
    """Read a file written by save_calibration; ModelError when it is not one."""
    from safetensors import SafetensorError, safe_open

    from agfprune.core.formats import require_regular_file, utf8_path

    path = require_regular_file(path, "calibration file")
    try:
        with utf8_path(path) as name, safe_open(name, framework="pt", device="cpu") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a readable calibration file ({first_line(exc, 160)})") from None
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            metadata[key] = value
    counts = _check_calibration_file(metadata, tensors, path)
    stats = CalibrationStats()
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        if kind in _KINDS:
            getattr(stats, kind)[name] = value
    metadata.pop("counts", None)
    stats.counts = counts
    for side in ("out", "in", "in_sq"):
        stats.counts.setdefault(side, {})
    stats.samples = int(metadata.get("samples", 0))
    stats.batches = int(metadata.get("batches", 0))
    metadata["path"] = str(path)
    stats.metadata = metadata
    return stats


def _check_calibration_file(metadata: dict[str, Any], tensors: Mapping[str, torch.Tensor],
                            path: Path) -> dict[str, dict[str, int]]:
    """The header, the counts and the fields later steps act on; every tensor floating-point and finite.
    Returns the counts (kind -> module -> number of summed positions)."""
    from agfprune.core.formats import Fields, check_header, check_integer

    version = check_header(metadata, path, FORMAT_NAME, FORMAT_VERSION, what="calibration file",
                           hint=" (run `agfprune calibrate`)")
    if version < FORMAT_VERSION:
        raise ModelError(f"{path}: calibration format {version} measured AGF at every layer output, not at "
                         "removal sites; rerun `agfprune calibrate`")
    fields = Fields(metadata, path)
    counts = fields.mapping("counts", required=False)
    for kind, per_module in counts.items():
        section = fields.section("counts").section(str(kind))
        for module, count in per_module.items():
            check_integer(count, 0, None, lambda: section.fail(str(module), "an integer ≥ 0", count))
    fields.integer("samples", minimum=0, required=False)
    fields.integer("batches", minimum=0, required=False)
    fields.integer("batch_size", minimum=1, required=False)
    fields.integer("seed", minimum=-(2**63), maximum=2**63 - 1, required=False)
    fields.string("fingerprint", required=False)
    fields.string("model", required=False)
    fields.string("checkpoint", required=False)
    fields.boolean("pretrained", required=False)
    fields.mapping("timm_kwargs", required=False)
    fields.input_size(required=False)
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{path}: tensor '{key}' must hold finite floating-point sums")
    return {str(kind): {str(module): int(count) for module, count in per_module.items()}
            for kind, per_module in counts.items()}


def check_matches(stats: CalibrationStats, loaded_model: Any) -> None:
    """ModelError unless the calibration was made with exactly these weights."""
    actual = getattr(loaded_model, "fingerprint", None)
    if not isinstance(actual, str):
        module = getattr(loaded_model, "model", loaded_model)
        actual = model_fingerprint(module)
    expected = stats.fingerprint
    source = stats.metadata.get("path", "the calibration")
    if expected != actual:
        recorded = stats.metadata.get("model") or "another model"
        raise ModelError(f"{source} was made for weights {expected} ({recorded}), but the given model "
                         f"has fingerprint {actual}; rerun `agfprune calibrate` with this model")
