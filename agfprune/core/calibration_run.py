"""The `calibrate` command's driver: one request, validated before loading, one (possibly
data-parallel) calibration pass, the file written by rank 0."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agfprune.core.model_source import ModelSource
from agfprune.core.progress import SILENT, Progress


@dataclass
class CalibrateRequest(ModelSource):
    """Everything `agfprune calibrate` needs (the model's fields: ModelSource)."""

    data: str
    out: Path
    split: str = "train"
    batches: int = 16
    batch_size: int = 64
    target: str = "labels"
    micro_batch: int | None = None
    workers: int = 0
    device: str = "auto"
    amp: bool = True  # as `calibrate --amp` (bf16 on CUDA only; see core.device.autocast_dtype)
    seed: int = 0
    skip_bad_images: bool = False

    def validate(self) -> None:
        """UsageError on bad options or an unwritable --out, before anything is loaded."""
        from agfprune.core.atomic import check_outputs
        from agfprune.core.calibration import TARGETS
        from agfprune.core.data import LoaderOptions
        from agfprune.core.device import resolve_device
        from agfprune.core.distributed import env_world_size
        from agfprune.core.errors import UsageError

        if self.batches <= 0:
            raise UsageError(f"--calib-batches {self.batches}: must be positive")
        if self.target not in TARGETS:
            raise UsageError(f"--calib-loss {self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.micro_batch is not None and self.micro_batch <= 0:
            raise UsageError(f"--micro-batch {self.micro_batch}: must be positive")
        if self.batches < env_world_size():
            raise UsageError(f"--calib-batches {self.batches}: fewer than the {env_world_size()} processes; "
                             "give every process at least one batch")
        LoaderOptions(batch_size=self.batch_size, workers=self.workers).validate()
        self.validate_source()
        resolve_device(self.device)
        check_outputs({"--out": self.out}, {"--checkpoint": self.checkpoint, "--data": self.data})


def run_calibration(request: CalibrateRequest, progress: Progress = SILENT) -> dict[str, Any] | None:
    """Calibrate and write `request.out`; returns the summary (None on ranks other than 0)."""
    from agfprune.core.device import resolve_device
    from agfprune.core.distributed import init_distributed, shutdown

    request.validate()
    context, device = init_distributed(resolve_device(request.device))
    try:
        return _run(request, context, device, progress if context.is_main else SILENT)
    finally:
        shutdown(context)


def _run(request: CalibrateRequest, context: Any, device: Any, progress: Progress) -> dict[str, Any] | None:
    from agfprune.core.calibration import collect_statistics, save_calibration
    from agfprune.core.data import build_transform, calibration_loader, open_dataset, skipped_images
    from agfprune.core.device import seed_everything

    seed_everything(request.seed)
    loaded = request.load_source(device)
    data_config = request.source_data_config(loaded.data_config)
    loaded.check_input_size(data_config)
    dataset = open_dataset(request.data, request.split, build_transform(data_config), request.skip_bad_images)
    loader = calibration_loader(dataset, batch_size=request.batch_size, batches=request.batches,
                                seed=request.seed, workers=request.workers, rank=context.rank,
                                world_size=context.world_size, device=device)
    provenance = {
        "model": loaded.arch,
        "checkpoint": str(loaded.checkpoint.resolve()) if loaded.checkpoint else None,
        "pretrained": bool(request.pretrained and loaded.checkpoint is None),
        "timm_kwargs": loaded.timm_kwargs,
        "input_size": list(data_config["input_size"]),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "data": str(request.data),
        "split": request.split,
        "data_count": len(dataset),  # type: ignore[arg-type]
        **({"skipped_images": len(skipped_images(dataset))} if request.skip_bad_images else {}),
        "seed": request.seed,
    }
    progress.log(f"calibrating {loaded.arch} on {request.batches} batches of {request.batch_size} "
                 f"from {request.data} ({request.split})"
                 + (f" on {context.world_size} processes" if context.enabled else ""))
    stats = collect_statistics(loaded.model, loader, device, batches=request.batches, target=request.target,
                               progress=progress, amp=request.amp, metadata=provenance,
                               micro_batch=request.micro_batch, context=context)
    if not context.is_main:
        return None
    save_calibration(request.out, stats)
    return {
        "out": str(request.out),
        "model": loaded.arch,
        "fingerprint": stats.fingerprint,
        "batches": stats.batches,
        "samples": stats.samples,
        **({"skipped_images": provenance["skipped_images"]} if request.skip_bad_images else {}),
        "target": request.target,
        "removal_sites": len(stats.out_abs) + len(stats.in_abs),
        "input_norm_layers": len(stats.in_sq),
        "parameters_with_gradients": len(stats.grad),
        "device": str(device),
        "processes": context.world_size,
        "micro_batch": request.micro_batch,
        "seconds": stats.metadata["seconds"],
    }
