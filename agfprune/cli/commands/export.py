"""`agfprune export`: ONNX, TorchScript or safetensors, each verified against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o


def export_command(
    checkpoint_arg: o.CheckpointArg = None,
    export_format: Annotated[Optional[str], typer.Option(
        "--format", "-f", help="(required) onnx (dynamic batch axis; needs the [export] extra), torchscript or "
                               "safetensors.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="(required) Output file.")] = None,
    checkpoint: o.CheckpointOpt = None,
    model: o.ModelOpt = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", help="Batch size of the example input (parity is also checked at 1 and N+1).")] = 2,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset [default: the exporter's].")] = None,
    torchscript_mode: Annotated[str, typer.Option(
        "--torchscript-mode", help="trace (works for most models) or script (keeps control flow).")] = "trace",
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Export a checkpoint and check the export against PyTorch (fails above a max abs diff of 1e-4)."""
    from agfprune.cli.common import data_overrides, load_model_from_options
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout
    from agfprune.core.export import check_export_request, export_model

    checkpoint_path = o.require(o.checkpoint_of(checkpoint_arg, checkpoint), "CHECKPOINT (or --checkpoint)")
    o.require(export_format, "--format")
    o.require(out, "--out")
    check_export_request(export_format.lower(), out, source=checkpoint_path, batch_size=batch_size, opset=opset,
                         torchscript_mode=torchscript_mode.lower())
    overrides = data_overrides(img_size, mean, std)  # recorded in the export's metadata
    loaded = load_model_from_options(model, checkpoint_path, False, "cpu")
    loaded.data_config = overrides.apply(loaded.data_config)
    loaded.check_input_size(loaded.data_config)
    report = export_model(loaded, export_format.lower(), out, batch_size=batch_size, opset=opset,
                          torchscript_mode=torchscript_mode.lower(), seed=seed, progress=RichProgress(quiet))
    document = report.as_dict()
    if json_output:
        print_json(document)
        return
    rows = {"format": report.format, "file": report.path, "model": report.arch,
            "max abs diff": f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:g})",
            "checked batch sizes": ", ".join(map(str, report.batch_sizes)), "bytes": report.bytes,
            **{k.replace("_", " "): v for k, v in report.detail.items()}}
    stdout.print(key_value_table(f"export {report.arch}", rows))
