"""`agfprune calibrate`: one forward+backward pass over seeded batches, saved as calibration stats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agfprune.cli import options as o


def calibrate_command(
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    pretrained: o.PretrainedOpt = False,
    data: o.DataOpt = Path("data"),
    split: Annotated[str, typer.Option("--split", help="Which split of --data to draw batches from.")] = "train",
    batches: Annotated[int, typer.Option("--batches", "-n", help="Number of batches (forward+backward passes).")] = 16,
    batch_size: o.BatchSizeOpt = 64,
    target: Annotated[str, typer.Option(
        "--target", help="Loss: 'labels' (cross-entropy on the data's labels) or 'self' (cross-entropy "
                         "against the model's own top-1 prediction; for unlabelled images).")] = "labels",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output calibration file (.safetensors).")] = Path("calib.safetensors"),
    workers: o.WorkersOpt = 0,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    device: o.DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision forward on CUDA; statistics "
                                      "are accumulated in float32 either way.")] = False,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Collect AGF, Taylor, input-norm and gradient statistics for every prunable structure."""
    from agfprune.cli.common import data_config_from_options, load_model_from_options, loader_from_options
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout
    from agfprune.core.atomic import check_writable
    from agfprune.core.calibration import TARGETS, calibrate, save_calibration
    from agfprune.core.device import resolve_device, seed_everything
    from agfprune.core.errors import UsageError

    if batches <= 0:
        raise UsageError(f"--batches {batches}: must be positive")
    if target not in TARGETS:
        raise UsageError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    check_writable(out)
    torch_device = resolve_device(device)
    seed_everything(seed)
    progress = RichProgress(quiet)
    loaded = load_model_from_options(model, checkpoint, pretrained, torch_device)
    data_config = data_config_from_options(loaded, img_size, mean, std)
    loader = loader_from_options(data, split, data_config, batch_size=batch_size, workers=workers, limit=None,
                                 seed=seed, device=torch_device, shuffle=True)
    provenance = {
        "model": loaded.arch,
        "checkpoint": str(loaded.checkpoint.resolve()) if loaded.checkpoint else None,
        "pretrained": bool(pretrained and loaded.checkpoint is None),
        "timm_kwargs": loaded.timm_kwargs,
        "input_size": list(data_config["input_size"]),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "data": str(data),
        "split": split,
        "data_count": len(loader.dataset),
        "seed": seed,
    }
    progress.log(f"calibrating {loaded.arch} on {batches} batches of {batch_size} from {data} ({split})")
    stats = calibrate(loaded.model, loader, torch_device, batches=batches, target=target, progress=progress,
                      amp=amp, metadata=provenance)
    save_calibration(out, stats)
    result = {
        "out": str(out),
        "model": loaded.arch,
        "fingerprint": stats.fingerprint,
        "batches": stats.batches,
        "samples": stats.samples,
        "target": target,
        "removal_sites": len(stats.out_abs) + len(stats.in_abs),
        "input_norm_layers": len(stats.in_sq),
        "parameters_with_gradients": len(stats.grad),
        "device": str(torch_device),
        "seconds": stats.metadata["seconds"],
    }
    if json_output:
        print_json(result)
    else:
        stdout.print(key_value_table(f"calibrate {loaded.arch}", result))
