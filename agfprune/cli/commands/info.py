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
    json_output: o.JsonOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Params, MACs, prunable layers, data config and checkpoint metadata of a model."""
    from agfprune.cli.common import data_overrides, load_model_from_options
    from agfprune.cli.output import key_value_table, print_json, stdout, table
    from agfprune.core.inspect import describe_model

    overrides = data_overrides(img_size, mean, std)
    loaded = load_model_from_options(model, o.checkpoint_of(checkpoint_arg, checkpoint), pretrained, "cpu")
    if overrides:
        loaded.data_config = overrides.apply(loaded.data_config)
    summary = describe_model(loaded)
    if json_output:
        print_json(summary)
        return
    head = {k: v for k, v in summary.items() if k not in ("prunable_layers", "metadata")}
    stdout.print(key_value_table(f"model {loaded.arch}", head))
    rows = [(layer["name"], layer["type"], layer["out"], layer["in"]) for layer in summary["prunable_layers"]]
    stdout.print(table(f"prunable layers ({len(rows)})", ["layer", "type", "out", "in"], rows))
    if summary["metadata"]:
        stdout.print(key_value_table("checkpoint metadata", {k: str(v)[:120] for k, v in summary["metadata"].items()}))
