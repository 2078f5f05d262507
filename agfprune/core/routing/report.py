"""`route eval`: how a calibrated router does on held-out data, against the obvious baselines.

Accuracies come from stored logits of both experts (the router's answer is light where
signal >= threshold, heavy elsewhere); the deployable Cascade is then timed on real batches
against the heavy expert alone, and its answers are checked against the stored-logit router.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agfprune.core.atomic import atomic_path, check_outputs, write_text_atomic
from agfprune.core.data import LoaderOptions
from agfprune.core.errors import UsageError
from agfprune.core.evaluate import Latency, count_cost
from agfprune.core.progress import SILENT, Progress
from agfprune.core.routing.calibrate import (Objective, Sweep, heavy_mask, point_at_threshold, select_point,
                                             threshold_sweep)
from agfprune.core.routing.cascade import Cascade, make_cascade
from agfprune.core.routing.cost import cascade_cost, mixture_cost, routing_cost
from agfprune.core.routing.experts import RoutingLogits, collect_logits, routing_loader
from agfprune.core.routing.router_file import load_router_experts, read_router
from agfprune.core.routing.signals import DYNAMIC_SIGNALS, check_signal, extra_macs, is_dynamic, signal_names

COMPLEMENT = {"first": "second", "second": "first", "none": "none"}


@dataclass
class RouterReport:
    """Everything `route eval` reports; `as_dict` is the --json document."""

    router: str
    data: str
    split_half: str
    split_seed: int
    held_out: bool | None
    samples: int
    signal: str
    threshold: float
    light_top1: float
    heavy_top1: float
    router_top1: float
    random_top1: float
    random_top1_std: float
    random_draws: int
    heavy_calls: int
    heavy_fraction: float
    bootstrap: dict[str, Any] | None
    signals: list[dict[str, Any]]
    calibration: dict[str, Any]
    macs: dict[str, Any]
    latency: dict[str, Any] | None
    sweep: Sweep | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document.pop("sweep")
        return document


def random_routing_accuracy(light_logits: torch.Tensor, heavy_logits: torch.Tensor, labels: torch.Tensor,
                            heavy_calls: int, draws: int, seed: int) -> tuple[float, float]:
    """Mean and std of top-1 when `heavy_calls` samples, chosen at random, go to the heavy expert."""
    light_correct = light_logits.argmax(dim=1).eq(labels)
    heavy_correct = heavy_logits.argmax(dim=1).eq(labels)
    scores = []
    for draw in range(max(1, draws)):
        generator = torch.Generator().manual_seed(seed + draw)
        chosen = torch.randperm(len(labels), generator=generator)[:heavy_calls]
        correct = light_correct.clone()
        correct[chosen] = heavy_correct[chosen]
        scores.append(100.0 * float(correct.float().mean()))
    return statistics.fmean(scores), statistics.pstdev(scores)


def error_auroc(scores: torch.Tensor, light_correct: torch.Tensor) -> float | None:
    """AUROC of "low signal" as a detector of the light expert's errors: the probability that an
    input it gets wrong has a lower signal than one it gets right (ties count 1/2; the Mann-Whitney
    U statistic from average ranks). 0.5 is chance, 1 separates them perfectly; None when the light
    expert is right everywhere or wrong everywhere."""
    errors = ~light_correct.bool()
    wrong, right = int(errors.sum()), int((~errors).sum())
    if wrong == 0 or right == 0:
        return None
    _, inverse, counts = torch.unique(-scores.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based average rank of -signal, ascending
    rank_sum = float(ranks[errors].sum())
    return (rank_sum - wrong * (wrong + 1) / 2) / (wrong * right)


def signal_quality(logits: RoutingLogits, signal: str, light_macs: float) -> dict[str, Any]:
    """How well `signal` tells the light expert's errors apart on these samples, and the fewest heavy
    calls with which it reaches the heavy expert's accuracy here (threshold chosen on these same
    samples: an in-sample property of the signal, not a held-out result)."""
    scores = logits.scores(signal)
    sweep = threshold_sweep(logits.light, logits.heavy, logits.labels, signal, scores)
    match = select_point(sweep, Objective("match-heavy", 0.0))
    light_correct = logits.light.argmax(dim=1).eq(logits.labels)
    return {"signal": signal, "dynamic": is_dynamic(signal), "error_auroc": error_auroc(scores, light_correct),
            "match_heavy_fraction": match.heavy_fraction, "match_heavy_top1": match.top1,
            "match_heavy_threshold": match.threshold, "extra_macs": round(extra_macs(signal, light_macs)),
            "extra_cost": DYNAMIC_SIGNALS[signal].extra_cost if is_dynamic(signal) else "none (from the logits)"}


def bootstrap_intervals(light_correct: torch.Tensor, heavy_correct: torch.Tensor, to_heavy: torch.Tensor,
                        resamples: int, seed: int, level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap intervals (samples drawn with replacement, threshold fixed) of router
    top-1, heavy fraction and router minus heavy top-1 (paired: the same draw for both)."""
    samples = len(to_heavy)
    generator = torch.Generator().manual_seed(seed)
    router_correct = torch.where(to_heavy, heavy_correct, light_correct).double()
    chunks: dict[str, list[torch.Tensor]] = {"router_top1": [], "heavy_fraction": [], "router_minus_heavy": []}
    for start in range(0, resamples, 256):  # chunks keep memory at 256 x N indices
        draws = torch.randint(samples, (min(256, resamples - start), samples), generator=generator)
        router = 100.0 * router_correct[draws].mean(dim=1)
        chunks["router_top1"].append(router)
        chunks["heavy_fraction"].append(to_heavy.double()[draws].mean(dim=1))
        chunks["router_minus_heavy"].append(router - 100.0 * heavy_correct.double()[draws].mean(dim=1))
    tail = (1.0 - level) / 2
    document: dict[str, Any] = {"resamples": resamples, "level": level, "seed": seed}
    for key, values in chunks.items():
        everything = torch.cat(values)
        document[key] = [float(torch.quantile(everything, tail)), float(torch.quantile(everything, 1 - tail))]
    return document


def sweep_document(sweep: Sweep, light_macs: float, heavy_macs: float, operating: dict[str, Any]) -> dict[str, Any]:
    """The full threshold sweep with both costs per point (the Pareto table, as JSON)."""
    points = []
    for point in sweep.points:
        row = point.as_dict()
        row["cascade_macs"] = round(cascade_cost(light_macs, heavy_macs, point.heavy_fraction))
        row["mixture_macs"] = round(mixture_cost(light_macs, heavy_macs, point.heavy_fraction))
        row["cascade_vs_heavy"] = row["cascade_macs"] / heavy_macs if heavy_macs else None
        row["mixture_vs_heavy"] = row["mixture_macs"] / heavy_macs if heavy_macs else None
        points.append(row)
    return {"signal": sweep.signal, "samples": sweep.samples, "light_top1": sweep.light_top1,
            "heavy_top1": sweep.heavy_top1, "light_macs": light_macs, "heavy_macs": heavy_macs,
            "operating_point": operating, "points": points}


def _timed(function: Any, batch: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0


@torch.no_grad()
def measure_cascade(cascade: Cascade, batches: list[torch.Tensor], device: torch.device,
                    repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median ms per batch of light alone, heavy alone and the cascade (with ms per image and the
    min/max over the repeats), and the median per-pass ratio cascade/heavy. The three run back to
    back on each real batch, in a rotating order, so that load from other processes on a shared
    machine hits all three alike."""
    names = ("light_ms", "heavy_ms", "cascade_ms")
    # the light pass is timed with its signal (a backward pass for dynamic signals)
    runners = dict(zip(names, (cascade.score, cascade.heavy, cascade)))
    passes: dict[str, list[float]] = {name: [] for name in names}
    for step in range(warmup + repeats):
        totals = dict.fromkeys(names, 0.0)
        for index, batch in enumerate(batches):
            shift = (step + index) % len(names)
            for name in names[shift:] + names[:shift]:
                totals[name] += _timed(runners[name], batch, device)
        if step >= warmup:
            for name in names:
                passes[name].append(totals[name] / len(batches))
    batch_size = int(batches[0].shape[0])
    result: dict[str, float] = {}
    for name, values in passes.items():
        spread = Latency.of(values, batch_size)
        result |= {name: spread.median_ms, f"{name}_per_image": spread.per_image_ms,
                   f"{name}_min": spread.min_ms, f"{name}_max": spread.max_ms}
    result["cascade_vs_heavy"] = statistics.median(
        c / h for c, h in zip(passes["cascade_ms"], passes["heavy_ms"]))
    result["light_vs_heavy"] = statistics.median(
        l / h for l, h in zip(passes["light_ms"], passes["heavy_ms"]))
    return result


@torch.no_grad()
def _cascade_agreement(cascade: Cascade, batches: list[torch.Tensor],
                       expected: torch.Tensor) -> tuple[float, float]:
    """Share of the timed samples where the Cascade's class equals the stored-logit router's,
    and the heavy fraction the Cascade actually used on them."""
    predictions, routed = [], []
    for batch in batches:
        logits, to_heavy = cascade.route(batch)
        predictions.append(logits.argmax(dim=1).cpu())
        routed.append(to_heavy.cpu())
    predicted, heavy = torch.cat(predictions), torch.cat(routed)
    return (float(predicted.eq(expected[: len(predicted)]).float().mean()),
            float(heavy.float().mean()) if len(heavy) else 0.0)


def _held_out(calibration: dict[str, Any], data_label: str, half: str, seed: int) -> bool | None:
    if calibration.get("data") != data_label:
        return None  # different data: disjointness cannot be told from paths alone
    if int(calibration.get("split_seed", -1)) != seed:
        return False
    return {calibration.get("split_half"), half} == {"first", "second"}


def evaluate_router(router_path: str | Path, data: str | Path, *, half: str | None = None,
                    split_seed: int | None = None, options: LoaderOptions | None = None,
                    device: torch.device | str = "cpu", light: Path | None = None, heavy: Path | None = None,
                    draws: int = 5, seed: int = 0, latency_batches: int = 4, latency_repeats: int = 10,
                    plot: Path | None = None, sweep_json: Path | None = None, signals: list[str] | None = None,
                    bootstrap: int = 1000, progress: Progress = SILENT, data_overrides: Any = None) -> RouterReport:
    """Evaluate router.yaml on `data` (by default the half it was not calibrated on). `signals`: the
    signals tabulated (AUROC, heavy fraction to match heavy; default all registered); `bootstrap`:
    resamples for the 95% intervals (0: none); `data_overrides`: --img-size/--mean/--std."""
    from agfprune.core.routing.calibrate import _data_label

    from agfprune.core.data import check_split_half

    if half is not None:
        check_split_half(half)
    check_outputs({"--plot": plot, "--sweep": sweep_json},
                  {"--router": router_path, "--light": light, "--heavy": heavy, "--data": data})
    if latency_batches < 0 or latency_repeats < 0 or draws < 1 or bootstrap < 0:
        raise UsageError("--latency-batches, --latency-repeats and --bootstrap must be >= 0, --random-draws >= 1")
    signals = signal_names() if signals is None else [check_signal(name) for name in signals]
    options = options or LoaderOptions()
    device = torch.device(device)
    spec = read_router(router_path)
    calibration = spec.calibration
    half = half or COMPLEMENT.get(str(calibration.get("split_half", "none")), "none")
    split_seed = int(calibration.get("split_seed", 0)) if split_seed is None else split_seed
    pair = load_router_experts(spec, router_path, device, light, heavy)
    data_config = data_overrides.apply(pair.data_config) if data_overrides else pair.data_config
    pair.light.check_input_size(data_config)
    pair.heavy.check_input_size(data_config)
    loader = routing_loader(data, half, split_seed, data_config, options, device)
    data_label = _data_label(data)
    held_out = _held_out(calibration, data_label, half, split_seed)
    if held_out is False:
        progress.log("warning: evaluating on images the threshold was calibrated on (same half)")
    dynamic = [name for name in dict.fromkeys([spec.signal, *signals]) if is_dynamic(name)]
    logits = collect_logits(pair, loader, device, progress, dynamic=dynamic)
    light_logits, heavy_logits, labels = logits.light, logits.heavy, logits.labels
    scores = logits.scores(spec.signal)
    point = point_at_threshold(light_logits, heavy_logits, labels, spec.signal, spec.threshold, scores)
    sweep = threshold_sweep(light_logits, heavy_logits, labels, spec.signal, scores)
    random_mean, random_std = random_routing_accuracy(light_logits, heavy_logits, labels,
                                                      point.heavy_calls, draws, seed)
    light_cost = count_cost(pair.light.model, pair.input_size, device)
    heavy_cost = count_cost(pair.heavy.model, pair.input_size, device)
    signal_macs = extra_macs(spec.signal, light_cost.macs)
    macs = routing_cost("MACs/image", light_cost.macs + signal_macs, heavy_cost.macs, point.heavy_fraction).as_dict()
    macs.update(light_forward=light_cost.macs, signal_extra=signal_macs,
                light_params=light_cost.params, heavy_params=heavy_cost.params)
    to_heavy = heavy_mask(scores, spec.threshold)
    intervals = None
    if bootstrap > 0:
        intervals = bootstrap_intervals(light_logits.argmax(dim=1).eq(labels), heavy_logits.argmax(dim=1).eq(labels),
                                        to_heavy, bootstrap, seed)
    quality = [signal_quality(logits, name, light_cost.macs) for name in signals]
    cascade = make_cascade(pair.light.model, pair.heavy.model, spec.signal, spec.threshold).to(device).eval()
    latency = None
    if latency_batches > 0 and latency_repeats > 0:
        batches = [images.to(device) for images, _ in _first_batches(loader, latency_batches)]
        progress.log(f"timing light, heavy and cascade on {len(batches)} batch(es) of {batches[0].shape[0]}")
        timings = measure_cascade(cascade, batches, device, latency_repeats)
        router_predictions = torch.where(to_heavy, heavy_logits.argmax(dim=1), light_logits.argmax(dim=1))
        agreement, batch_fraction = _cascade_agreement(cascade, batches, router_predictions)
        estimate = routing_cost("ms/batch", timings["light_ms"], timings["heavy_ms"], batch_fraction)
        latency = {
            "batch_size": int(batches[0].shape[0]), "batches": len(batches), "repeats": latency_repeats,
            "light_ms": timings["light_ms"], "heavy_ms": timings["heavy_ms"],
            "cascade_ms_measured": timings["cascade_ms"],
            **{f"{name}_ms_{stat}": timings[f"{name}_ms_{stat}"] for name in ("light", "heavy", "cascade")
               for stat in ("per_image", "min", "max")},
            "cascade_vs_heavy_measured": timings["cascade_vs_heavy"],
            "light_vs_heavy_measured": timings["light_vs_heavy"],
            "heavy_fraction_in_timed_batches": batch_fraction,
            "cascade_ms_formula": estimate.cascade, "mixture_ms_formula": estimate.mixture,
            "mixture_vs_heavy_formula": estimate.mixture_vs_heavy,
            "break_even_fraction": estimate.break_even_fraction,
            "cascade_matches_router": agreement,
            "device": str(device), "threads": torch.get_num_threads(),
        }
    report = RouterReport(
        router=str(router_path), data=data_label, split_half=half, split_seed=split_seed, held_out=held_out,
        samples=sweep.samples, signal=spec.signal, threshold=spec.threshold,
        light_top1=sweep.light_top1, heavy_top1=sweep.heavy_top1, router_top1=point.top1,
        random_top1=random_mean, random_top1_std=random_std, random_draws=draws,
        heavy_calls=point.heavy_calls, heavy_fraction=point.heavy_fraction, bootstrap=intervals, signals=quality,
        calibration=calibration, macs=macs, latency=latency, sweep=sweep,
    )
    operating = {"threshold": spec.threshold, "heavy_calls": point.heavy_calls,
                 "heavy_fraction": point.heavy_fraction, "top1": point.top1}
    document = sweep_document(sweep, light_cost.macs + signal_macs, heavy_cost.macs, operating)
    if sweep_json is not None:
        write_text_atomic(sweep_json, json.dumps(document, indent=1) + "\n")
    if plot is not None:
        write_plot(plot, document, report)
    return report


def _first_batches(loader: Any, count: int) -> list[Any]:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= count:
            break
    return batches


def write_plot(path: str | Path, document: dict[str, Any], report: RouterReport) -> None:
    """Accuracy vs cost (relative to the heavy expert) for both cost formulas, with the operating
    point, light, heavy and random routing marked; PNG via the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = document["points"]
    heavy_macs = document["heavy_macs"] or 1
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([p["cascade_macs"] / heavy_macs for p in points], [p["top1"] for p in points],
              label="router, cascade cost (C_light + f·C_heavy)", color="tab:blue")
    axes.plot([p["mixture_macs"] / heavy_macs for p in points], [p["top1"] for p in points],
              label="router, mixture cost (f·C_heavy + (1−f)·C_light)", color="tab:orange", linestyle="--")
    light_rel = document["light_macs"] / heavy_macs
    axes.scatter([light_rel], [report.light_top1], marker="s", color="tab:green", zorder=3, label="light only")
    axes.scatter([1.0], [report.heavy_top1], marker="D", color="tab:red", zorder=3, label="heavy only")
    f = report.heavy_fraction
    axes.scatter([light_rel + f], [report.random_top1], marker="x", color="grey", zorder=3,
                 label=f"random routing, f={f:.2f} (cascade cost)")
    axes.scatter([report.macs["cascade_vs_heavy"]], [report.router_top1], marker="*", s=160, color="tab:blue",
                 zorder=4, label=f"operating point, f={f:.2f}")
    axes.scatter([report.macs["mixture_vs_heavy"]], [report.router_top1], marker="*", s=160,
                 color="tab:orange", zorder=4)
    axes.axvline(1.0, color="tab:red", linewidth=0.8, linestyle=":")
    axes.set_xlabel("cost relative to the heavy expert (MACs)")
    axes.set_ylabel("top-1 accuracy (%)")
    held = {True: "held-out half", False: "calibration half", None: "other data"}[report.held_out]
    axes.set_title(f"router ({report.signal} ≥ {report.threshold:.4g}) on {report.samples} images, {held}",
                   fontsize=9)
    low = min(report.light_top1, report.random_top1, min(p["top1"] for p in points))
    high = max(report.heavy_top1, max(p["top1"] for p in points))
    axes.set_ylim(low - 1.0, high + 1.0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png")
