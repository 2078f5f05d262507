"""`agfprune route`: fit the threshold (`route calibrate`), evaluate and export a light-first,
heavy-when-unsure cascade."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agfprune.cli import options as o

route_app = typer.Typer(
    name="route",
    help="Hybrid routing: the light (pruned) expert answers first, the heavy one only for hard inputs.",
    no_args_is_help=True,
)

LightOpt = Annotated[Optional[Path], typer.Option(
    "--light", help="(required) Light expert checkpoint (e.g. a pruned agfprune .safetensors).")]
HeavyOpt = Annotated[Optional[Path], typer.Option("--heavy", help="(required) Heavy expert checkpoint (e.g. the dense model).")]
LightModelOpt = Annotated[Optional[str], typer.Option(
    "--light-model", help="timm name for a light checkpoint without metadata (e.g. cifar_resnet20 for a .th).")]
HeavyModelOpt = Annotated[Optional[str], typer.Option(
    "--heavy-model", help="timm name for a heavy checkpoint without metadata.")]
SplitSeedOpt = Annotated[Optional[int], typer.Option(
    "--split-seed", help="Seed of the permutation that splits the val images into halves.")]
RouterOpt = Annotated[Optional[Path], typer.Option("--router", help="(required) router.yaml written by `route calibrate`.")]
LightOverrideOpt = Annotated[Optional[Path], typer.Option(
    "--light", help="Use this light checkpoint instead of the recorded path (fingerprint must match).")]
HeavyOverrideOpt = Annotated[Optional[Path], typer.Option(
    "--heavy", help="Use this heavy checkpoint instead of the recorded path (fingerprint must match).")]


def _objective(match_heavy: bool, tolerance: Optional[float], max_heavy_fraction: Optional[float],
               threshold: Optional[float], sustained: bool = False):
    from agfprune.core.errors import UsageError
    from agfprune.core.routing.calibrate import Objective

    chosen = [name for name, given in (("--match-heavy", match_heavy),
                                       ("--max-heavy-fraction", max_heavy_fraction is not None),
                                       ("--threshold", threshold is not None)) if given]
    if len(chosen) != 1:
        raise UsageError("give exactly one objective: --match-heavy [--tolerance T], --max-heavy-fraction F "
                         f"or --threshold t (got {', '.join(chosen) if chosen else 'none'})")
    if tolerance is not None and not match_heavy:
        raise UsageError("--tolerance applies only to --match-heavy")
    if sustained and not match_heavy:
        raise UsageError("--sustained applies only to --match-heavy")
    if match_heavy:
        return Objective("match-heavy", 0.0 if tolerance is None else tolerance, sustained)
    if max_heavy_fraction is not None:
        return Objective("max-heavy-fraction", max_heavy_fraction)
    return Objective("threshold", float(threshold))  # type: ignore[arg-type]


@route_app.command("calibrate")
def calibrate_command(
    light: LightOpt = None,
    heavy: HeavyOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="(required) router.yaml to write.")] = None,
    light_model: LightModelOpt = None,
    heavy_model: HeavyModelOpt = None,
    data: o.DataOpt = None,
    signal: Annotated[str, typer.Option(
        "--signal", help="Light expert's confidence: confidence (top-1 prob), margin (top-1 − top-2 prob), "
                         "entropy (negative entropy); or the dynamic input-grad (minus the norm of the input "
                         "gradient of its own top-1 loss: one extra backward pass, not exportable).")] = "confidence",
    match_heavy: Annotated[bool, typer.Option(
        "--match-heavy", help="Objective: fewest heavy calls with accuracy within --tolerance of the heavy model.")] = False,
    tolerance: Annotated[Optional[float], typer.Option(
        "--tolerance", help="Accuracy points below the heavy model allowed with --match-heavy (default 0).")] = None,
    sustained: Annotated[bool, typer.Option(
        "--sustained", help="With --match-heavy: the fewest heavy calls from which accuracy stays within the "
                            "tolerance at every larger heavy fraction (not the first, often lucky, crossing).")] = False,
    max_heavy_fraction: Annotated[Optional[float], typer.Option(
        "--max-heavy-fraction", help="Objective: best accuracy with at most this fraction (0-1) of heavy calls.")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="Objective: use this signal threshold as is (heavy where signal < t).")] = None,
    split_half: Annotated[str, typer.Option(
        "--split-half", help="Fit the threshold on the first or second seeded half of the val images, "
                             "or none (all).")] = "first",
    split_seed: SplitSeedOpt = 0,
    batch_size: o.BatchSizeOpt = o.DEFAULT_BATCH_SIZE,
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
    """Run both experts over one half of --data, pick the threshold meeting the objective, write router.yaml."""
    from agfprune.cli.common import data_overrides
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout
    from agfprune.core.data import LoaderOptions
    from agfprune.core.device import resolve_device, seed_everything
    from agfprune.core.routing.calibrate import fit_threshold
    from agfprune.core.routing.experts import ExpertSource

    for value, name in ((light, "--light"), (heavy, "--heavy"), (data, "--data"), (out, "--out")):
        o.require(value, name)
    overrides = data_overrides(img_size, mean, std)
    # the objective and the signal are validated once, by fit_threshold, before anything loads
    objective = _objective(match_heavy, tolerance, max_heavy_fraction, threshold, sustained)
    torch_device = resolve_device(device)
    seed_everything(seed)
    result = fit_threshold(
        ExpertSource(light, light_model), ExpertSource(heavy, heavy_model), data, signal, objective, out,
        half=split_half, split_seed=split_seed or 0,
        options=LoaderOptions(batch_size=batch_size, workers=workers, limit=limit, seed=seed,
                              skip_bad_images=skip_bad_images),
        device=torch_device, progress=RichProgress(quiet), data_overrides=overrides)
    document = {"router": str(out), "signal": signal, "threshold": result.spec.threshold,
                "objective": result.spec.objective["description"], **result.spec.calibration,
                "warnings": result.warnings}
    if json_output:
        print_json(document)
    else:
        stdout.print(key_value_table("route calibrate", document))


@route_app.command("eval")
def eval_command(
    router: RouterOpt = None,
    data: o.DataOpt = None,
    split_half: Annotated[Optional[str], typer.Option(
        "--split-half", help="first|second|none; default: the half the threshold was NOT fitted on.")] = None,
    split_seed: SplitSeedOpt = None,
    light: LightOverrideOpt = None,
    heavy: HeavyOverrideOpt = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write accuracy vs cost as a PNG.")] = None,
    sweep: Annotated[Optional[Path], typer.Option("--sweep", help="Write the full threshold sweep (Pareto table) as JSON.")] = None,
    random_draws: Annotated[int, typer.Option("--random-draws", help="Random-routing draws averaged.")] = 5,
    latency_batches: Annotated[int, typer.Option(
        "--latency-batches", help="Real batches timed for light, heavy and cascade latency; 0 skips timing.")] = 4,
    latency_repeats: o.LatencyRepeatsOpt = o.DEFAULT_LATENCY_REPEATS,
    signals: Annotated[str, typer.Option(
        "--signals", help="Comma-separated signals for the signal table (error AUROC, heavy fraction to match "
                          "heavy), 'all' or 'none'. Dynamic ones cost a backward pass of the light expert.")] = "all",
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Bootstrap resamples for the 95% intervals of router top-1 and heavy fraction; 0: none.")] = 1000,
    batch_size: o.BatchSizeOpt = o.DEFAULT_BATCH_SIZE,
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
    """Accuracy of light, heavy, router and random routing; heavy fraction; both costs; cascade latency."""
    from agfprune.cli.common import data_overrides
    from agfprune.cli.output import RichProgress, key_value_table, print_json, stdout, table
    from agfprune.core.data import LoaderOptions
    from agfprune.core.device import resolve_device, seed_everything
    from agfprune.core.routing.report import evaluate_router

    from agfprune.core.routing.signals import check_signal

    o.require(router, "--router")
    o.require(data, "--data")
    names = None if signals == "all" else [] if signals == "none" else [
        check_signal(name.strip()) for name in signals.split(",") if name.strip()]
    overrides = data_overrides(img_size, mean, std)
    torch_device = resolve_device(device)
    seed_everything(seed)
    report = evaluate_router(
        router, data, half=split_half, split_seed=split_seed,
        options=LoaderOptions(batch_size=batch_size, workers=workers, limit=limit, seed=seed,
                              skip_bad_images=skip_bad_images),
        device=torch_device, light=light, heavy=heavy, draws=random_draws, seed=seed,
        latency_batches=latency_batches, latency_repeats=latency_repeats, plot=plot, sweep_json=sweep,
        signals=names, bootstrap=bootstrap, progress=RichProgress(quiet), data_overrides=overrides)
    document = report.as_dict()
    if json_output:
        print_json(document)
        return
    summary = {k: document[k] for k in ("data", "split_half", "held_out", "samples", "signal", "threshold",
                                        "light_top1", "heavy_top1", "router_top1", "random_top1",
                                        "heavy_calls", "heavy_fraction")}
    if report.bootstrap:
        level = f"{100 * report.bootstrap['level']:g}%"
        for key in ("router_top1", "heavy_fraction", "router_minus_heavy"):
            low, high = report.bootstrap[key]
            summary[f"{key} {level} interval"] = f"[{low:.4g}, {high:.4g}]"
    stdout.print(key_value_table("route eval", summary))
    if report.signals:
        stdout.print(table("signals on these images (AUROC of low signal for light errors; fewest heavy calls "
                           "reaching heavy top-1 here, threshold fitted on these same images)",
                           ["signal", "error AUROC", "heavy fraction to match heavy", "extra MACs/image"],
                           [(q["signal"], "-" if q["error_auroc"] is None else q["error_auroc"],
                             q["match_heavy_fraction"], q["extra_macs"]) for q in report.signals]))
    macs, lat = report.macs, report.latency or {}
    ms = (lambda key: lat.get(key, "-")) if lat else (lambda key: "-")
    rows = [
        ("light + signal (C_light)", macs["light"], ms("light_ms")),
        ("heavy (C_heavy)", macs["heavy"], ms("heavy_ms")),
        ("cascade = C_light + f·C_heavy (honest)", round(macs["cascade"]), ms("cascade_ms_formula")),
        ("cascade / heavy", macs["cascade_vs_heavy"],
         lat["cascade_ms_formula"] / lat["heavy_ms"] if lat else "-"),
        ("mixture = f·C_heavy + (1−f)·C_light (paper)", round(macs["mixture"]), ms("mixture_ms_formula")),
        ("mixture / heavy", macs["mixture_vs_heavy"], ms("mixture_vs_heavy_formula")),
        ("Cascade module, measured", "-", ms("cascade_ms_measured")),
        ("measured / heavy measured", "-", ms("cascade_vs_heavy_measured")),
        ("break-even f = 1 − C_light/C_heavy", macs["break_even_fraction"], ms("break_even_fraction")),
    ]
    unit = f"ms/batch of {lat['batch_size']}" if lat else "ms/batch (not timed)"
    stdout.print(table(f"cost at heavy fraction f = {report.heavy_fraction:.4f}", ["quantity", "MACs/image", unit], rows))
    if lat:
        stdout.print(table(f"measured latency, {lat['threads']} thread(s), {lat['device']}: median over "
                           f"{lat['repeats']} repeats of {lat['batches']} batch(es)",
                           ["model", "ms/batch", "min", "max", "ms/image"],
                           [(label, lat[f"{key}_ms" if key != "cascade" else "cascade_ms_measured"],
                             lat[f"{key}_ms_min"], lat[f"{key}_ms_max"], lat[f"{key}_ms_per_image"])
                            for label, key in (("light + signal", "light"), ("heavy", "heavy"),
                                               ("cascade", "cascade"))]))
    if report.sweep is not None:
        pareto = [p for p in report.sweep.points if p.pareto]
        step = max(1, len(pareto) // 12)
        shown = pareto[::step] + ([pareto[-1]] if (len(pareto) - 1) % step else [])
        stdout.print(table(f"Pareto points ({len(pareto)} of {len(report.sweep.points)}; --sweep for all)",
                           ["threshold", "heavy calls", "heavy fraction", "top1"],
                           [(f"{p.threshold:.6g}", p.heavy_calls, p.heavy_fraction, p.top1) for p in shown]))


@route_app.command("export")
def export_command(
    router: RouterOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="(required) TorchScript file to write (e.g. cascade.pt).")] = None,
    light: LightOverrideOpt = None,
    heavy: HeavyOverrideOpt = None,
    device: o.DeviceOpt = "cpu",
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Compile the router's Cascade to TorchScript (checked against the eager module) and write it."""
    from dataclasses import asdict

    from agfprune.cli.output import key_value_table, print_json, stdout
    from agfprune.core.device import resolve_device
    from agfprune.core.routing.deploy import export_router

    o.require(router, "--router")
    o.require(out, "--out")
    result = export_router(router, out, resolve_device(device), light, heavy)
    if json_output:
        print_json(asdict(result))
    else:
        stdout.print(key_value_table("route export", asdict(result)))
