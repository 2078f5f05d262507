"""`agfprune demo`: the whole pipeline on synthetic data, with no files or network needed.

Each step calls the core entry point its command uses (`agfprune.core.demo`): train → eval →
calibrate → score → prune → finetune (distilled) → route → export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agfprune.cli import options as o


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's data and artefacts.")] = Path("demo-out"),
    model: Annotated[str, typer.Option("--model", "-m", help="Compact CIFAR-style model to train.")] = "cifar_resnet20",
    train_images: Annotated[int, typer.Option("--train-images", help="Synthetic training images.")] = 2500,
    val_images: Annotated[int, typer.Option("--val-images", help="Synthetic validation images.")] = 1000,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train the dense model.")] = 5,
    ratio: Annotated[float, typer.Option("--ratio", help="Channel pruning ratio (0.75 removes ~94% of params and MACs).")] = 0.75,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Distillation epochs after pruning.")] = 2,
    device: o.DeviceOpt = "auto",
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Synthesise a learnable 10-class image set, train a compact ResNet on it, then calibrate, score,
    prune, finetune, route and export it; print a results table (a few minutes on 2 CPU cores)."""
    from agfprune.cli.output import RichProgress, print_json, stdout, table
    from agfprune.core.demo import DemoRequest, run_demo

    request = DemoRequest(out=out, model=model, train_images=train_images, val_images=val_images, epochs=epochs,
                          ratio=ratio, finetune_epochs=finetune_epochs, device=device, seed=seed)
    steps = run_demo(request, RichProgress(quiet))
    if json_output:
        print_json({"out": str(out), "steps": steps})
        return
    rows = [(s["step"], s["result"], Path(s["artefact"]).name, f"{s['seconds']:.1f}") for s in steps]
    stdout.print(table(f"agfprune demo ({out})", ["step", "result", "artefact", "seconds"], rows))
