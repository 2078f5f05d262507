"""`agfprune finetune`: recover accuracy after pruning (optionally distilling from the dense model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o


def finetune_command(
    checkpoint_arg: o.CheckpointArg = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="(required) Best weights (by val top-1) go here, NAME.safetensors; the last epoch's "
        "weights beside it as NAME.last.safetensors.")] = None,
    checkpoint: o.CheckpointOpt = None,
    data: o.DataOpt = Path("data"),
    val: Annotated[Optional[str], typer.Option(
        "--eval-data", help="Validation data (default: the val/ split of --data, when it has one).")] = None,
    model: o.ModelOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Passes over the training data.")] = 10,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (momentum 0.9, Nesterov) or adamw.")] = "sgd",
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Peak learning rate [default: 0.01 for sgd, 0.001 for adamw].")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        "--weight-decay", help="Weight decay on weights only, not norms/biases [default: 5e-4 sgd, 0.05 adamw].")] = None,
    warmup_epochs: Annotated[float, typer.Option(
        "--warmup-epochs", help="Linear warm-up length (epochs, may be fractional); cosine decay after.")] = 0.0,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="Cross-entropy label smoothing.")] = 0.0,
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="Distil from this model: a checkpoint path (e.g. the dense model) or a timm name.")] = None,
    kd_alpha: Annotated[float, typer.Option(
        "--kd-alpha", help="Weight of the distillation loss (0..1); used only with --teacher.")] = 0.5,
    kd_temperature: Annotated[float, typer.Option("--kd-temperature", help="Distillation temperature.")] = 4.0,
    batch_size: o.BatchSizeOpt = o.DEFAULT_BATCH_SIZE,
    workers: o.WorkersOpt = 0,
    limit: o.LimitOpt = None,
    skip_bad_images: o.SkipBadImagesOpt = False,
    val_limit: o.EvalLimitOpt = None,
    save_every: Annotated[int, typer.Option(
        "--save-every", help="Write the resumable state every N optimiser steps (also at each epoch end; 0 = epoch ends only).")] = 200,
    state: Annotated[Optional[Path], typer.Option(
        "--state", help="Resumable state file [default: NAME.state.pt beside --out].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the state file.")] = False,
    log: Annotated[Optional[Path], typer.Option(
        "--log", help="JSON-lines log, one line per epoch [default: NAME.log.jsonl beside --out].")] = None,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    eval_initial: Annotated[bool, typer.Option(
        "--eval-initial/--no-eval-initial", help="Validate once before training (logged as epoch 0).")] = True,
    device: o.DeviceOpt = "auto",
    amp: o.AmpOpt = True,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Fine-tune a (pruned) checkpoint; keep the best and the last weights; resumable; torchrun-ready."""
    import os

    from agfprune.cli.common import data_overrides
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout, table
    from agfprune.core.finetune import FinetuneConfig, finetune

    o.require(out, "--out")
    settings = FinetuneConfig(
        checkpoint=o.require(o.checkpoint_of(checkpoint_arg, checkpoint), "CHECKPOINT (or --checkpoint)"), data=str(data), val=val, out=out, model=model, epochs=epochs,
        optimizer=optimizer.lower(), lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, teacher=teacher, kd_alpha=kd_alpha, kd_temperature=kd_temperature,
        batch_size=batch_size, workers=workers, limit=limit, val_limit=val_limit, save_every=save_every,
        state=state, log=log, resume=resume, seed=seed, device=device, amp=amp, eval_initial=eval_initial,
        skip_bad_images=skip_bad_images,
        data_overrides=data_overrides(img_size, mean, std),
    )
    result = finetune(settings, RichProgress(quiet))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    if json_output:
        print_json(result.as_dict())
        return
    rows = [(r["epoch"], r["train_loss"], r["val_top1"], r["val_top5"], r["seconds"], r["images_per_second"],
             "yes" if r["best"] and r.get("improved", True) else "") for r in result.epochs]
    stdout.print(table(f"finetune {result.arch}", ["epoch", "train loss", "val top-1", "val top-5", "seconds",
                                                   "img/s", "best"], rows))
    initial_top1 = result.initial["val_top1"] if result.initial else None
    if initial_top1 is not None and result.best_top1 <= initial_top1:
        stdout.print(f"note: no epoch beat the initial val top-1 ({initial_top1:.2f}%); the best-weights file holds "
                     f"epoch {result.best_epoch}, the best fine-tuned one", markup=False, highlight=False)
    stdout.print(key_value_table("result", {
        "val top-1 before": result.initial["val_top1"] if result.initial else None,
        "val top-1 best": result.best_top1, "best epoch": result.best_epoch,
        "best weights": str(result.outputs.best), "last weights": str(result.outputs.last),
        "state": str(result.outputs.state), "log": str(result.outputs.log), "processes": result.world_size,
    }))
