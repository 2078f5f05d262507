"""Write a pruned model as a self-describing safetensors checkpoint, verified before it lands.

The file holds the tensors, the base architecture and its timm kwargs, every module attribute
pruning changed (structure diff against a freshly built base), and the pruning record. Before
the file takes its final name it is rebuilt from the file alone and must give bit-identical
outputs, so a checkpoint that cannot be reloaded is never left behind.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any

import torch

from agfprune.core.atomic import atomic_path
from agfprune.core.checkpoint import structure_diff, write_checkpoint
from agfprune.core.errors import ModelError
from agfprune.core.models import create_model, load_model
from agfprune.core.pruning.engine import PruneResult


def pruned_data_config(loaded: Any, result: PruneResult) -> dict[str, Any]:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in loaded.data_config.items()}
    config["input_size"] = list(result.record.input_size)
    return config


@torch.no_grad()
def verify_reload(path: Path, model: torch.nn.Module, input_size: tuple[int, ...]) -> None:
    """Rebuild from `path` without any model name and demand torch.equal outputs on CPU."""
    reference = copy.deepcopy(model).cpu().eval()
    rebuilt = load_model(checkpoint=path, device="cpu").model
    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    if not torch.equal(reference(example), rebuilt(example)):
        raise ModelError(f"{path}: the reloaded pruned model does not reproduce the pruned model's outputs")


def save_pruned(path: str | Path, loaded: Any, result: PruneResult, verify: bool = True) -> str:
    """Save `result.model` as a pruned checkpoint of `loaded` (atomically); return its fingerprint.
    With `verify`, the file is first rebuilt from itself and must reproduce the outputs exactly."""
    path = Path(path)
    # the loaded dense model is its own base; a re-pruned checkpoint needs a freshly built one
    base = create_model(loaded.arch, **loaded.timm_kwargs) if loaded.metadata.get("structure") else loaded.model
    structure = structure_diff(base, result.model)
    extra = {"pruning": result.record.as_dict(),
             "base_checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None}
    with atomic_path(path) as tmp:
        staging = tmp.with_name(tmp.name + ".safetensors")
        try:
            fingerprint = write_checkpoint(staging, result.model, arch=loaded.arch,
                                           timm_kwargs=loaded.timm_kwargs,
                                           data_config=pruned_data_config(loaded, result),
                                           structure=structure, extra=extra)
            if verify:
                verify_reload(staging, result.model, tuple(result.record.input_size))
            os.replace(staging, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
    return fingerprint
