"""`agfprune prune`: remove channels (and heads) structurally and save a self-describing checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o

RATIO_HELP = (
    "What to remove, strictly between 0 and 1. With --target channels (default): the fraction of "
    "channels removed from EVERY prunable group (torch-pruning's pruning ratio; with --global, the "
    "fraction of all channels, ranked across layers). With --target params or macs: the fraction of "
    "the model's parameters or MACs to remove (the channel ratio is searched until within 1%).")


def prune_command(
    checkpoint_arg: o.CheckpointArg = None,
    ratio: Annotated[Optional[float], typer.Option("--ratio", "-r", help="(required) " + RATIO_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="(required) Pruned checkpoint to write (.safetensors).")] = None,
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    pretrained: o.PretrainedOpt = False,
    metric: Annotated[Optional[str], typer.Option(
        "--metric", help="Metric that scores channels (agf, taylor, magnitude-l1, magnitude-l2, bn-scale, wanda, "
                         "ria, snip, random) [default: agf with --data or --calib, magnitude-l2 without].")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", "-d", help="Images to collect statistics on and to re-estimate BatchNorm statistics with "
                             "(train split): ImageFolder root, .npz or synthetic:N.")] = None,
    calib: Annotated[Optional[Path], typer.Option(
        "--calib", help="Calibration file from `agfprune calibrate` (instead of collecting statistics here).")] = None,
    scores: Annotated[Optional[Path], typer.Option(
        "--scores", help="scores.json from `agfprune score` (instead of a metric; single step only).")] = None,
    target: Annotated[str, typer.Option(
        "--target", help="What --ratio counts: channels (per group), params or macs (of the whole model).")] = "channels",
    global_pruning: Annotated[bool, typer.Option(
        "--global", help="Rank channels across layers instead of removing --ratio from each: agf, taylor and snip "
                         "in raw loss units, other metrics after --normalizer.")] = False,
    normalizer: Annotated[Optional[str], typer.Option(
        "--normalizer", help="Per-group score scaling before global ranking: none, mean, max, sum, standardization "
                             "or gaussian [default: none for agf/taylor/snip/wanda/random, mean otherwise].",
        show_default=False)] = None,
    cost_aware: Annotated[bool, typer.Option(
        "--cost-aware", help="With --global and --target params|macs: rank by utility per parameter (MAC) a "
                             "channel frees.")] = False,
    max_layer_ratio: Annotated[Optional[float], typer.Option(
        "--max-layer-ratio", help="Most of one group's channels that may go (default 0.9 with --global, else 1); "
                                  "a group always keeps at least one channel.")] = None,
    round_to: Annotated[Optional[int], typer.Option(
        "--round-to", help="Keep channel counts at multiples of K (hardware-friendly widths).")] = None,
    ignore: Annotated[Optional[list[str]], typer.Option(
        "--ignore", help="Glob of module names to leave unpruned, e.g. 'layer1.*' (repeatable); the classifier "
                         "is never pruned.")] = None,
    prune_heads: Annotated[bool, typer.Option(
        "--prune-heads", help="ViTs: remove whole attention heads (--ratio of them, at least one kept) instead of "
                              "head dimensions; MLP neurons and embedding channels are pruned either way.")] = False,
    head_ratio: Annotated[Optional[float], typer.Option(
        "--head-ratio", help="ViTs: fraction of each attention's heads to remove (default --ratio with "
                             "--prune-heads); implies --prune-heads.")] = None,
    steps: Annotated[int, typer.Option(
        "--steps", help="Iterative pruning in K steps, re-scoring (statistics collected and BatchNorm "
                        "re-estimated again) in between.")] = 1,
    bn_recalibrate: o.BnBatchesOpt = None,
    calib_batches: o.CalibBatchesOpt = o.DEFAULT_CALIB_BATCHES,
    calib_target: o.CalibLossOpt = "labels",
    eval_data: Annotated[Optional[Path], typer.Option(
        "--eval-data", help="Also report top-1/top-5 of the pruned model on this data's val split.")] = None,
    eval_limit: o.EvalLimitOpt = None,
    batch_size: o.CalibBatchSizeOpt = o.DEFAULT_CALIB_BATCH_SIZE,
    workers: o.WorkersOpt = 0,
    limit: o.LimitOpt = None,
    skip_bad_images: o.SkipBadImagesOpt = False,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    device: o.DeviceOpt = "auto",
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Prune channels structurally (coupled channels go together), re-estimate BatchNorm statistics, save a
    checkpoint that `agfprune eval/info` and `agfprune.load()` rebuild without --model."""
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout
    from agfprune.core.pruning import PruneOptions, PruneRequest, run_prune

    o.require(ratio, "--ratio")
    o.require(out, "--out")
    options = PruneOptions(ratio=ratio, target=target, global_pruning=global_pruning,
                           max_layer_ratio=max_layer_ratio, round_to=round_to, ignore=list(ignore or []),
                           prune_heads=prune_heads, head_ratio=head_ratio, steps=steps, normalizer=normalizer,
                           cost_aware=cost_aware)
    request = PruneRequest(out=out, options=options, model=model, checkpoint=o.checkpoint_of(checkpoint_arg, checkpoint),
                           pretrained=pretrained,
                           metric=metric, data=data, calib=calib, scores=scores, calib_batches=calib_batches,
                           calib_target=calib_target, bn_recalibrate=bn_recalibrate, batch_size=batch_size,
                           workers=workers, limit=limit, seed=seed, device=device, eval_data=eval_data,
                           eval_limit=eval_limit, skip_bad_images=skip_bad_images,
                           img_size=img_size, mean=o.parse_floats(mean, "--mean"), std=o.parse_floats(std, "--std"))
    _result, summary = run_prune(request, RichProgress(quiet or json_output))
    if json_output:
        print_json(summary)
        return
    shown = {k: v for k, v in summary.items()
             if k not in ("calibration", "ignore", "input_size", "notes", "width_summary")}
    stdout.print(key_value_table(f"pruned {summary['model']} -> {summary['out']}", shown))
    for note in summary["notes"]:
        stdout.print(f"note: {note}", markup=False, highlight=False)
