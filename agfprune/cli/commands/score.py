"""`agfprune score`: per-group channel scores from a calibration file, for one metric or all."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o


def score_command(
    checkpoint_arg: o.CheckpointArg = None,
    calib: Annotated[Optional[Path], typer.Option(
        "--calib", help="Calibration file from `agfprune calibrate` (needed by agf, taylor, wanda, ria, snip; "
                        "also names the model when --model/--checkpoint are not given).")] = None,
    metric: Annotated[str, typer.Option(
        "--metrics", help="Metric names, comma-separated, or 'all' (one file with every metric).")] = "agf",
    model: o.ModelOpt = None,
    checkpoint: o.CheckpointOpt = None,
    pretrained: o.PretrainedOpt = False,
    group_reduction: Annotated[Optional[str], typer.Option(
        "--group-reduction", help="How a group's layer scores combine: mean, sum, max, prod or first "
        "[default: sum for agf/taylor/snip (loss units), mean otherwise].", show_default=False)] = None,
    normalizer: Annotated[Optional[str], typer.Option(
        "--normalizer", help="Per-group scaling: mean, max, sum, standardization, gaussian or none "
        "[default: none for agf/taylor/snip/wanda/random (comparable across groups), mean otherwise].",
        show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output scores file (.json).")] = None,
    img_size: o.ImgSizeOpt = None,
    mean: o.MeanOpt = None,
    std: o.StdOpt = None,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Score every prunable group (residual-coupled channels and attention heads share one vector)."""
    from agfprune.cli.output import print_json, stdout, table
    from agfprune.core.atomic import check_outputs
    from agfprune.core.errors import UsageError
    from agfprune.core.scoring_run import ScoreRequest, run_scoring

    request = ScoreRequest(calib=calib, metric=metric, model=model, checkpoint=o.checkpoint_of(checkpoint_arg, checkpoint), pretrained=pretrained,
                           group_reduction=group_reduction, normalizer=normalizer, img_size=img_size,
                           mean=o.parse_floats(mean, "--mean"), std=o.parse_floats(std, "--std"), seed=seed)
    request.validate()
    if out is not None:
        check_outputs({"--out": out}, {"--calib": calib, "--checkpoint": checkpoint, "--config": config})
    elif not json_output:
        raise UsageError("give --out scores.json (or --json to print the scores summary only)")
    report, summary = run_scoring(request, out)
    if json_output:
        print_json(summary)
        return
    rows = [(name, s["groups"], s["skipped"], s["channels"], s["min"], s["median"], s["max"],
             s.get("spearman_vs_agf", "-"), s.get("bottom30_overlap_vs_agf", "-"))
            for name, s in summary["metrics"].items()]
    stdout.print(table(f"scores of {summary['model']} ({summary['fingerprint']})" + (f" -> {out}" if out else ""),
                       ["metric", "groups", "skipped", "channels", "min", "median", "max",
                        "spearman vs agf", "bottom-30% overlap vs agf"], rows))
