"""`agfprune eval`: accuracy, loss, size and latency of a model on a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o


def eval_command(
    checkpoint_arg: o.CheckpointArg = None,
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    pretrained: o.PretrainedOpt = False,
    data: o.DataOpt = None,
    batch_size: o.BatchSizeOpt = o.DEFAULT_BATCH_SIZE,
    workers: o.WorkersOpt = 0,
    limit: o.LimitOpt = None,
    skip_bad_images: o.SkipBadImagesOpt = False,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    latency_repeats: o.LatencyRepeatsOpt = o.DEFAULT_LATENCY_REPEATS,
    threads: Annotated[int, typer.Option(
        "--threads", help="Intra-op threads for PyTorch and onnxruntime alike; 0 keeps each runtime's default.")] = 0,
    compare_to: Annotated[Optional[Path], typer.Option(
        "--compare-to", metavar="DENSE",
        help="Also evaluate this checkpoint or .onnx file (any runtime) on the same data; latencies are "
             "timed interleaved and the speed-up, top-1 difference and MACs ratio reported.")] = None,
    device: o.DeviceOpt = "auto",
    amp: o.AmpOpt = True,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Top-1, top-5, mean loss, params, MACs and latency (per batch and per image, median and spread
    over --latency-repeats) on --data (its val split).

    CHECKPOINT may be an exported .onnx file: it then runs in onnxruntime, so that what you ship is
    what you measure.
    """
    from agfprune.cli.options import parse_floats
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout
    from agfprune.core.evaluate import EvalRequest, run_eval

    request = EvalRequest(
        data=None if data is None else str(data), model=model,
        checkpoint=(str(o.checkpoint_of(checkpoint_arg, checkpoint)) if (checkpoint_arg or checkpoint) else None),
        pretrained=pretrained, compare_to=str(compare_to) if compare_to else None, batch_size=batch_size,
        workers=workers, limit=limit, img_size=img_size, mean=parse_floats(mean, "--mean"),
        std=parse_floats(std, "--std"), latency_repeats=latency_repeats, threads=threads, device=device,
        amp=amp, seed=seed, skip_bad_images=skip_bad_images)
    result = run_eval(request, RichProgress(quiet))
    if json_output:
        print_json(result)
        return
    stdout.print(key_value_table(f"eval {result['model']}", _shown(result)))
    if "compare_to" in result:
        stdout.print(key_value_table(f"compare to {result['compare_to']['model']}", _shown(result["compare_to"])))
        stdout.print(result["summary"], highlight=False, markup=False)


def _shown(report: dict) -> dict:
    """The report as table rows, its latency fields as one line (per batch, spread, per image)."""
    from agfprune.core.evaluate import LATENCY_FIELDS, describe_latency

    rows = {}
    for key, value in report.items():
        if key == "latency_ms":
            rows["latency"] = describe_latency(report)
        elif key not in LATENCY_FIELDS and key not in ("compare_to", "summary"):
            rows[key] = value
    return rows
