"""`agfprune calibrate`: one forward+backward pass over seeded batches, saved as calibration stats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o


def calibrate_command(
    checkpoint_arg: o.CheckpointArg = None,
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    pretrained: o.PretrainedOpt = False,
    data: o.DataOpt = Path("data"),
    split: Annotated[str, typer.Option("--split", help="Which split of --data to draw batches from.")] = "train",
    batches: o.CalibBatchesOpt = o.DEFAULT_CALIB_BATCHES,
    batch_size: o.CalibBatchSizeOpt = o.DEFAULT_CALIB_BATCH_SIZE,
    target: o.CalibLossOpt = "labels",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output calibration file (.safetensors).")] = Path("calib.safetensors"),
    micro_batch: Annotated[Optional[int], typer.Option(
        "--micro-batch", help="Run each batch as chunks of at most this many images (same statistics, "
                              "less activation memory on large models and inputs).")] = None,
    workers: o.WorkersOpt = 0,
    skip_bad_images: o.SkipBadImagesOpt = False,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    device: o.DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 mixed precision on CUDA, on by default as in "
                                      "eval and finetune; ignored on CPU and on GPUs without bf16 (fp16 gradients "
                                      "would underflow without loss scaling). The statistics are accumulated in "
                                      "float32 either way; --no-amp also computes activations and gradients in float32.")] = True,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Collect AGF, Taylor, input-norm and gradient statistics for every prunable structure.

    Runs data-parallel under torchrun (`torchrun --nproc-per-node N -m agfprune calibrate ...`): the
    seeded batches are split over the processes and the sums added up, so the file is the one a
    single process writes (up to float summation order); rank 0 writes it.
    """
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout
    from agfprune.core.calibration_run import CalibrateRequest, run_calibration

    request = CalibrateRequest(
        data=str(data), out=out, model=model, checkpoint=o.checkpoint_of(checkpoint_arg, checkpoint), pretrained=pretrained, split=split,
        batches=batches, batch_size=batch_size, target=target, micro_batch=micro_batch, workers=workers,
        img_size=img_size, mean=o.parse_floats(mean, "--mean"), std=o.parse_floats(std, "--std"),
        device=device, amp=amp, seed=seed, skip_bad_images=skip_bad_images)
    result = run_calibration(request, RichProgress(quiet))
    if result is None:
        return  # under torchrun only rank 0 reports
    if json_output:
        print_json(result)
    else:
        stdout.print(key_value_table(f"calibrate {result['model']}", result))
