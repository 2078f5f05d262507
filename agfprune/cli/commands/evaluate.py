"""`agfprune eval`: accuracy, loss, size and latency of a model on a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o


def eval_command(
    checkpoint_arg: Annotated[Optional[Path], typer.Argument(
        metavar="[CHECKPOINT]", help="Checkpoint to evaluate (same as --checkpoint).")] = None,
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    pretrained: o.PretrainedOpt = False,
    data: o.DataOpt = None,
    batch_size: o.BatchSizeOpt = 128,
    workers: o.WorkersOpt = 0,
    limit: o.LimitOpt = None,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    latency_repeats: Annotated[int, typer.Option(
        "--latency-repeats", help="Timed batches for latency (median reported); 0 skips it.")] = 10,
    device: o.DeviceOpt = "auto",
    amp: o.AmpOpt = True,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Top-1, top-5, mean loss, params, MACs and median batch latency on --data (its val split)."""
    from agfprune.cli.common import data_config_from_options, load_model_from_options, loader_from_options
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout
    from agfprune.core.device import resolve_device, seed_everything
    from agfprune.core.evaluate import count_cost, evaluate_accuracy, measure_latency

    o.require(data, "--data")
    if latency_repeats < 0:
        from agfprune.core.errors import UsageError

        raise UsageError(f"--latency-repeats {latency_repeats}: must be ≥ 0 (0 skips the latency measurement)")
    torch_device = resolve_device(device)
    seed_everything(seed)
    progress = RichProgress(quiet)
    loaded = load_model_from_options(model, checkpoint_arg or checkpoint, pretrained, torch_device)
    data_config = data_config_from_options(loaded, img_size, mean, std)
    loader = loader_from_options(data, "val", data_config, batch_size=batch_size, workers=workers,
                                 limit=limit, seed=seed, device=torch_device)
    accuracy = evaluate_accuracy(loaded.model, loader, torch_device, amp, progress)
    input_size = tuple(data_config["input_size"])
    cost = count_cost(loaded.model, input_size, torch_device)
    latency = (measure_latency(loaded.model, input_size, batch_size, torch_device, repeats=latency_repeats, amp=amp)
               if latency_repeats > 0 else None)
    result = {
        "model": loaded.arch,
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "fingerprint": loaded.fingerprint,
        "data": str(data),
        "samples": accuracy.samples,
        "top1": round(accuracy.top1, 4),
        "top5": round(accuracy.top5, 4),
        "loss": round(accuracy.loss, 6),
        "params": cost.params,
        "macs": cost.macs,
        "latency_ms": round(latency, 3) if latency is not None else None,
        "batch_size": batch_size,
        "device": str(torch_device),
    }
    if json_output:
        print_json(result)
    else:
        stdout.print(key_value_table(f"eval {loaded.arch}", result))
