"""`agfprune info`: what a model or checkpoint is, without any data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o


def info_command(
    checkpoint_arg: o.CheckpointArg = None,
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    pretrained: o.PretrainedOpt = False,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Pruned checkpoints: draw dense vs pruned width per layer (and heads) as a PNG.")] = None,
    json_output: o.JsonOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Params, MACs, prunable layers, data config and checkpoint metadata of a model."""
    from agfprune.cli.common import data_overrides, load_model_from_options
    from agfprune.cli.output import key_value_table, print_json, stdout, table
    from agfprune.core.inspect import describe_model

    overrides = data_overrides(img_size, mean, std)
    if plot is not None:
        from agfprune.core.atomic import check_writable

        check_writable(plot)
    loaded = load_model_from_options(model, o.checkpoint_of(checkpoint_arg, checkpoint), pretrained, "cpu")
    if overrides:
        loaded.data_config = overrides.apply(loaded.data_config)
        loaded.check_input_size(loaded.data_config)
    summary = describe_model(loaded)
    if plot is not None:
        from agfprune.core.errors import UsageError
        from agfprune.core.widths_report import plot_widths

        if "widths" not in summary:
            raise UsageError(f"--plot draws dense vs pruned widths: {loaded.checkpoint or loaded.arch} is not pruned")
        plot_widths(summary["widths"], plot, f"{loaded.arch}: dense vs pruned widths")
        summary["plot"] = str(plot)
    if json_output:
        print_json(summary)
        return
    head = {k: v for k, v in summary.items() if k not in ("prunable_layers", "metadata", "widths", "width_summary")}
    stdout.print(key_value_table(f"model {loaded.arch}", head))
    if "widths" in summary:
        from agfprune.core.widths_report import describe_widths

        rows = [(w["layer"], w["kind"], w["before"], w["after"], f"{100 * w['kept']:.0f}%") for w in summary["widths"]]
        stdout.print(table(f"widths before -> after pruning: {describe_widths(summary['width_summary'])}",
                           ["layer", "type", "before", "after", "kept"], rows))
    else:
        rows = [(layer["name"], layer["type"], layer["out"], layer["in"]) for layer in summary["prunable_layers"]]
        stdout.print(table(f"prunable layers ({len(rows)})", ["layer", "type", "out", "in"], rows))
    if summary["metadata"]:
        stdout.print(key_value_table("checkpoint metadata", {k: str(v)[:120] for k, v in summary["metadata"].items()}))
