"""Finetuning's resumable state: the NAME.state.pt file (tensors and plain values, read with
weights_only=True), the random streams it restores, and the checks that make a damaged or foreign
state file one ModelError."""

from __future__ import annotations

import contextlib
import json
import random
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from agfprune.core.atomic import atomic_path
from agfprune.core.errors import ModelError, UsageError, first_line
from agfprune.core.formats import Fields, check_header, require_regular_file

STATE_FORMAT = "agfprune-finetune-state"
STATE_VERSION = 2  # 2: timm parameter groups and schedule (version-1 optimiser state does not fit)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(path: Path, payload: dict[str, Any]) -> None:
    """Write the state file atomically (a crash mid-write leaves the previous one)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path, run_fingerprint: str, run_key: dict[str, Any]) -> dict[str, Any]:
    """Read a state file (weights_only) and refuse it when it belongs to another run."""
    if not path.exists():
        raise UsageError(f"--resume: state file {path} not found (run without --resume to start)")
    require_regular_file(path, "finetune state file")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign files raise many types
        raise ModelError(f"{path}: not a readable finetune state file ({first_line(exc, 160)})") from None
    check_header(state, path, STATE_FORMAT, STATE_VERSION, version_key="version", what="finetune state file")
    fields = Fields(state, path)
    if fields.string("run_fingerprint") != run_fingerprint:
        recorded = _json_field(fields, "run_key", dict)
        differences = [f"{k} {recorded.get(k)!r} vs {v!r}" for k, v in run_key.items() if recorded.get(k) != v]
        raise ModelError(f"{path}: resume state belongs to another run (recorded vs now: "
                         f"{'; '.join(differences[:4]) or 'unknown'}); use the same checkpoint and options, "
                         "or start fresh without --resume")
    if state.get("version") != STATE_VERSION:
        raise ModelError(f"{path}: finetune state version {state.get('version')} (this agfprune resumes version "
                         f"{STATE_VERSION}); start fresh without --resume")
    _check_state_fields(fields)
    return state


@contextlib.contextmanager
def restoring(path: Path, part: str) -> Iterator[None]:
    """A saved part that torch (or random/numpy) refuses is a damaged state file, not a bug."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
        raise ModelError(f"{path}: field '{part}' does not fit this run ({first_line(exc, 160)})") from None


def _json_field(fields: Any, key: str, kind: type, allow_empty: bool = False) -> Any:
    """A JSON document stored as a string field of the state (a list or mapping)."""
    text = fields.string(key)
    if allow_empty and text == "":
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, kind):
        raise fields.fail(key, f"a JSON {'list' if kind is list else 'object'} in a string", text)
    return value


def _check_state_fields(fields: Any) -> None:
    """Every field `_finetune` restores, with its type, so that a damaged state is one ModelError."""
    for key in ("epoch", "step_in_epoch", "global_step", "best_epoch", "epoch_loss_count"):
        fields.integer(key, minimum=0)
    for key in ("epoch_loss_sum", "epoch_seconds"):
        fields.number(key)
    fields.number("best_top1", minimum=-1.0, maximum=100.0)
    for key in ("model", "optimizer", "schedule", "scaler"):
        fields.mapping(key)
    if not all(isinstance(v, torch.Tensor) for v in fields.mapping("model").values()):
        raise fields.fail("model", "a mapping of tensors", "non-tensor values")
    rng = fields.section("rng")
    for key in ("python", "numpy"):
        rng.sequence(key)
    for key in ("torch", "loader"):
        if not isinstance(rng.document.get(key), torch.Tensor):
            raise rng.fail(key, "a tensor", rng.document.get(key))
    records = _json_field(fields, "records", list)
    if not all(isinstance(record, dict) for record in records):
        raise fields.fail("records", "a JSON list of objects", fields.document["records"])
    _json_field(fields, "initial", dict, allow_empty=True)
