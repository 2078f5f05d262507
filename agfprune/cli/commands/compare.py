"""`agfprune compare`: the metric stress test (metric × ratio × seed), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o

DEFAULT_METRICS = "agf,taylor,magnitude-l1,magnitude-l2,bn-scale,wanda,ria,snip,random"


def compare_command(
    checkpoint_arg: o.CheckpointArg = None,
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    calib_data: Annotated[Optional[Path], typer.Option(
        "--data", "-d", help="(required) Images for statistics, BatchNorm re-estimation and finetuning "
                            "(train/ split).")] = None,
    eval_data: Annotated[Optional[Path], typer.Option(
        "--eval-data", help="(required) Images to report accuracy on (val/ split).")] = None,
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated metric names.")] = DEFAULT_METRICS,
    ratios: Annotated[str, typer.Option("--ratios", help="Comma-separated pruning ratios (see --target).")] = "0.5,0.75",
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds 0..N-1: vary calibration batches and random.")] = 3,
    target: Annotated[str, typer.Option("--target", help="What --ratios remove: channels, params or macs.")] = "channels",
    allocation: Annotated[str, typer.Option(
        "--allocation", help="Comma list of local (ratio per group), global (ranked across groups) and global-cost "
                             "(ranked by utility per param/MAC freed; needs --target params|macs).")] = "local",
    normalizer: Annotated[Optional[str], typer.Option(
        "--normalizer", help="Per-group score scaling for every metric [default: each metric's own: none for "
                             "agf/taylor/snip/wanda/random, mean otherwise].", show_default=False)] = None,
    prune_heads: Annotated[bool, typer.Option(
        "--prune-heads", help="ViTs: remove whole attention heads (the ratio of each attention's heads) instead "
                              "of head dimensions; MLP neurons and the embedding follow --allocation.")] = False,
    calib_batches: o.CalibBatchesOpt = o.DEFAULT_CALIB_BATCHES,
    calib_batch_size: o.CalibBatchSizeOpt = o.DEFAULT_CALIB_BATCH_SIZE,
    bn_batches: Annotated[int, typer.Option(
        "--bn-batches", help="Batches to re-estimate BatchNorm statistics on after pruning (0 turns it off).")] = 16,
    eval_limit: o.EvalLimitOpt = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Equal finetuning budget per cell (0: none).")] = 0,
    finetune_limit: Annotated[Optional[int], typer.Option("--finetune-limit", help="Images per finetuning epoch (seeded subset).")] = None,
    finetune_lr: Annotated[float, typer.Option("--finetune-lr", help="Peak SGD learning rate (cosine schedule).")] = 0.01,
    finetune_teacher: Annotated[bool, typer.Option(
        "--finetune-teacher", help="Distil from the dense model while finetuning (½ cross-entropy + ½ KD at T=4).")] = False,
    baselines: Annotated[str, typer.Option(
        "--baselines", help="Comma list of baselines: scratch (the --reference shape per allocation, ratio and seed, "
                            "re-initialised and trained with the same budget).")] = "",
    scratch_epochs: Annotated[Optional[int], typer.Option(
        "--scratch-epochs", help="Epochs for the scratch baseline [default: --finetune-epochs].",
        show_default=False)] = None,
    reference: Annotated[str, typer.Option(
        "--reference", help="Metric that every metric is paired against (besides random); scratch takes its shapes.")] = "agf",
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Compute nothing: write results.* from the cells finished so far (marked partial).")] = False,
    batch_size: o.BatchSizeOpt = o.DEFAULT_BATCH_SIZE,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    workers: o.WorkersOpt = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="(required) Output folder (resumable).")] = None,
    device: o.DeviceOpt = "auto",
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Prune with every metric at every ratio and seed; report mean ± std, ranks, overlap and a plot.

    Writes DIR/results.json, results.md, accuracy.png, timings.json and DIR/cells/*.json; running the
    same command again reuses finished cells. Under `torchrun --nproc-per-node N -m agfprune compare ...`
    the unfinished cells are dealt round-robin over the ranks and rank 0 writes the reports.
    """
    from agfprune.cli.common import data_overrides, load_model_from_options
    from agfprune.cli.output import RichProgress, print_json, stdout
    from agfprune.core.atomic import check_outputs
    from agfprune.core.compare import COMPARE_FILES, CompareConfig, rank_and_world, render_markdown, run_compare
    from agfprune.core.device import configure_threads, rank_device, resolve_device

    o.require(calib_data, "--data")
    o.require(eval_data, "--eval-data")
    o.require(out, "--out")
    rank, world = rank_and_world()
    overrides = data_overrides(img_size, mean, std)
    torch_device = rank_device(resolve_device(device))
    ratio_values = o.parse_floats(ratios, "--ratios") or ()
    compare_config = CompareConfig(
        calib_data=str(calib_data), eval_data=str(eval_data), out=Path(out),
        metrics=[m.strip() for m in metrics.split(",") if m.strip()], ratios=list(ratio_values), seeds=seeds,
        target=target, calib_batches=calib_batches, calib_batch_size=calib_batch_size, bn_batches=bn_batches,
        eval_limit=eval_limit, eval_batch_size=batch_size, finetune_epochs=finetune_epochs,
        finetune_limit=finetune_limit, finetune_lr=finetune_lr, finetune_batch_size=64, workers=workers,
        allocations=[a.strip() for a in allocation.split(",") if a.strip()], normalizer=normalizer,
        prune_heads=prune_heads,
        finetune_teacher=finetune_teacher, baselines=[b.strip() for b in baselines.split(",") if b.strip()],
        scratch_epochs=scratch_epochs, reference=reference, report_only=report_only)
    compare_config.validate()
    # before the model is loaded; the input must not be one of the files the report writes
    check_outputs({f"--out file {name}": Path(out) / name for name in COMPARE_FILES},
                  {"--checkpoint": o.checkpoint_of(checkpoint_arg, checkpoint), "--data": calib_data,
                   "--eval-data": eval_data})
    if not report_only:  # --report-only computes nothing, so needs no calibration images
        from agfprune.core.data import check_enough_batches

        check_enough_batches(calib_data, "train", calib_batches, calib_batch_size, None)
    configure_threads()
    loaded = load_model_from_options(model, o.checkpoint_of(checkpoint_arg, checkpoint), False, torch_device)
    if overrides:
        loaded.data_config = overrides.apply(loaded.data_config)
        loaded.check_input_size(loaded.data_config)
    results = run_compare(loaded, compare_config, torch_device, RichProgress(quiet or rank != 0))
    if results is None:  # another rank than 0: rank 0 prints the results
        return
    if json_output:
        print_json({k: v for k, v in results.items() if k != "cells"})
    else:
        stdout.print(render_markdown(results), markup=False, highlight=False)
