"""Choosing the routing threshold from stored logits of both experts.

Routing rule (the same everywhere, including the Cascade): a sample keeps the light expert's
answer when its signal is >= the threshold, and goes to the heavy expert when it is below.
Sweeping the threshold over every distinct signal value gives every reachable operating point;
an objective then picks one of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agfprune.core.errors import UsageError
from agfprune.core.routing.signals import compute_signal

OBJECTIVES = ("match-heavy", "max-heavy-fraction", "threshold")


@dataclass
class SweepPoint:
    """One operating point: the threshold, how many samples it sends to the heavy expert, accuracy."""

    threshold: float
    heavy_calls: int
    heavy_fraction: float
    top1: float
    pareto: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sweep:
    """All operating points of a (light, heavy, signal) triple on one data set, fewest heavy calls first."""

    signal: str
    samples: int
    light_top1: float
    heavy_top1: float
    points: list[SweepPoint]


@dataclass
class Objective:
    """How to pick the threshold: match-heavy (value = tolerance, points), max-heavy-fraction
    (value = fraction in [0, 1]) or threshold (value = the threshold itself). `sustained` (match-heavy
    only): the fewest heavy calls from which accuracy stays within the tolerance for every larger
    heavy fraction, instead of the first crossing, which on a finite calibration set is often a
    lucky dip of the accuracy curve that does not hold on new images."""

    kind: str
    value: float
    sustained: bool = False

    def validate(self) -> None:
        if self.kind not in OBJECTIVES:
            raise UsageError(f"objective {self.kind!r}: expected one of {', '.join(OBJECTIVES)}")
        if not math.isfinite(self.value):  # a router with threshold inf/NaN is refused when read
            raise UsageError(f"--{self.kind}: value must be a finite number, got {self.value}")
        if self.kind == "match-heavy" and self.value < 0:
            raise UsageError(f"--tolerance {self.value}: must be >= 0 (accuracy points below the heavy model)")
        if self.kind == "max-heavy-fraction" and not 0.0 <= self.value <= 1.0:
            raise UsageError(f"--max-heavy-fraction {self.value}: must be in [0, 1]")
        if self.sustained and self.kind != "match-heavy":
            raise UsageError("--sustained applies only to --match-heavy")

    def describe(self) -> str:
        if self.kind == "match-heavy":
            rule = " at every larger heavy fraction too" if self.sustained else ""
            return f"fewest heavy calls with accuracy >= heavy - {self.value:g} points{rule}"
        if self.kind == "max-heavy-fraction":
            return f"best accuracy with at most {100 * self.value:g}% heavy calls"
        return f"fixed threshold {self.value:g}"

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"kind": self.kind, "value": float(self.value), "description": self.describe()}
        if self.sustained:
            document["sustained"] = True
        return document


def heavy_mask(signal: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where a sample goes to the heavy expert (signal < threshold, compared in float32
    exactly as the Cascade compares it)."""
    return signal.float() < torch.tensor(threshold, dtype=torch.float32, device=signal.device)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1).eq(labels)


def _mark_pareto(points: list[SweepPoint]) -> None:
    best = float("-inf")
    for point in points:  # sorted by heavy calls: a point is Pareto if it beats all cheaper ones
        point.pareto = point.top1 > best
        best = max(best, point.top1)


def _signal_scores(signal: str, light_logits: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
    return (compute_signal(signal, light_logits) if scores is None else scores).float().cpu()


def threshold_sweep(light_logits: torch.Tensor, heavy_logits: torch.Tensor, labels: torch.Tensor,
                    signal: str, scores: torch.Tensor | None = None) -> Sweep:
    """Every distinct operating point, computed in O(N log N) from cumulative correctness.
    `scores`: the signal's values when they do not come from the logits (dynamic signals)."""
    samples = len(labels)
    if samples == 0:
        raise UsageError("cannot calibrate a router on an empty data set")
    scores = _signal_scores(signal, light_logits, scores)
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    light_correct = _correct(light_logits, labels)[order].long()
    heavy_correct = _correct(heavy_logits, labels)[order].long()
    zero = torch.zeros(1, dtype=torch.long)
    light_before = torch.cat([zero, light_correct.cumsum(0)])  # correct among the k lowest-signal
    heavy_before = torch.cat([zero, heavy_correct.cumsum(0)])
    light_total = int(light_before[-1])
    # k heavy calls are reachable when the k-th and (k+1)-th lowest signals differ (ties move together)
    rises = (torch.nonzero(sorted_scores[1:] > sorted_scores[:-1]).flatten() + 1).tolist()
    boundaries = [0] + rises + [samples]
    heavy_list, light_list, score_list = heavy_before.tolist(), light_before.tolist(), sorted_scores.tolist()
    above_max = torch.nextafter(sorted_scores[-1:], torch.tensor([float("inf")]))
    points = []
    for k in boundaries:
        threshold = score_list[k] if k < samples else float(above_max[0])
        correct = heavy_list[k] + light_total - light_list[k]
        points.append(SweepPoint(threshold, k, k / samples, 100.0 * correct / samples))
    _mark_pareto(points)
    return Sweep(signal, samples, 100.0 * light_total / samples,
                 100.0 * int(heavy_before[-1]) / samples, points)


def point_at_threshold(light_logits: torch.Tensor, heavy_logits: torch.Tensor, labels: torch.Tensor,
                       signal: str, threshold: float, scores: torch.Tensor | None = None) -> SweepPoint:
    """The operating point of a given threshold on a data set."""
    to_heavy = heavy_mask(_signal_scores(signal, light_logits, scores), threshold)
    predictions = torch.where(to_heavy, heavy_logits.argmax(dim=1), light_logits.argmax(dim=1))
    samples = len(labels)
    calls = int(to_heavy.sum())
    top1 = 100.0 * int(predictions.eq(labels).sum()) / samples
    return SweepPoint(float(torch.tensor(threshold, dtype=torch.float32)), calls, calls / samples, top1)


def select_point(sweep: Sweep, objective: Objective, light_logits: torch.Tensor | None = None,
                 heavy_logits: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 scores: torch.Tensor | None = None) -> SweepPoint:
    """The operating point that meets `objective` on the sweep's data."""
    objective.validate()
    if objective.kind == "match-heavy":
        target = sweep.heavy_top1 - objective.value
        # the last point (all heavy) equals the heavy accuracy, so this always finds one
        if not objective.sustained:
            return next(p for p in sweep.points if p.top1 >= target - 1e-9)
        chosen = sweep.points[-1]
        for point in reversed(sweep.points):  # walk down from all-heavy while accuracy holds
            if point.top1 < target - 1e-9:
                break
            chosen = point
        return chosen
    if objective.kind == "max-heavy-fraction":
        allowed = [p for p in sweep.points if p.heavy_calls <= objective.value * sweep.samples + 1e-9]
        return max(allowed, key=lambda p: (p.top1, -p.heavy_calls))
    if light_logits is None or heavy_logits is None or labels is None:
        raise UsageError("a fixed --threshold needs the calibration logits to report its accuracy")
    return point_at_threshold(light_logits, heavy_logits, labels, sweep.signal, objective.value, scores)


@dataclass
class CalibrationResult:
    """What `route calibrate` produced: the router written, its sweep and the chosen point."""

    spec: Any  # RouterSpec (typed loosely to keep this module free of file-format imports)
    sweep: Sweep
    point: SweepPoint
    warnings: list[str] = field(default_factory=list)


def _data_label(data: Any) -> str:
    text = str(data)
    return text if text.startswith("synthetic:") else str(Path(text).resolve())


def fit_threshold(light: Any, heavy: Any, data: Any, signal: str, objective: Objective, out: Any, *,
                  half: str = "first", split_seed: int = 0, options: Any = None,
                  device: Any = "cpu", progress: Any = None, data_overrides: Any = None) -> CalibrationResult:
    """Run both experts once over one half of the calibration data, choose the threshold that
    meets `objective`, and write router.yaml to `out`.

    `light`/`heavy` are ExpertSource; `options` a LoaderOptions.
    """
    from agfprune.core.atomic import check_outputs
    from agfprune.core.data import LoaderOptions, check_split_half
    from agfprune.core.evaluate import count_cost
    from agfprune.core.progress import SILENT
    from agfprune.core.routing.cost import routing_cost
    from agfprune.core.routing.experts import collect_logits, load_experts, routing_loader
    from agfprune.core.routing.router_file import ExpertRecord, RouterSpec, write_router
    from agfprune.core.routing.signals import check_signal, extra_macs, is_dynamic

    progress = progress or SILENT
    options = options or LoaderOptions()
    check_signal(signal)
    objective.validate()
    check_split_half(half)
    check_outputs({"--out": out}, {"--light": light.checkpoint, "--heavy": heavy.checkpoint, "--data": data})
    device = torch.device(device)
    pair = load_experts(light, heavy, device)
    data_config = data_overrides.apply(pair.data_config) if data_overrides else pair.data_config
    pair.light.check_input_size(data_config)
    pair.heavy.check_input_size(data_config)
    loader = routing_loader(data, half, split_seed, data_config, options, device)
    progress.log(f"calibrating on {len(loader.dataset)} images ({half} half of {data}, split seed {split_seed})")
    logits = collect_logits(pair, loader, device, progress, dynamic=(signal,) if is_dynamic(signal) else ())
    scores = logits.scores(signal)
    sweep = threshold_sweep(logits.light, logits.heavy, logits.labels, signal, scores)
    point = select_point(sweep, objective, logits.light, logits.heavy, logits.labels, scores)
    costs = {role: count_cost(expert.model, pair.input_size, device)
             for role, expert in (("light", pair.light), ("heavy", pair.heavy))}
    signal_macs = extra_macs(signal, costs["light"].macs)
    macs = routing_cost("MACs/image", costs["light"].macs + signal_macs, costs["heavy"].macs, point.heavy_fraction)
    router_dir = Path(out).resolve().parent
    spec = RouterSpec(
        light=ExpertRecord.from_loaded(pair.light, light.model, costs["light"].params, costs["light"].macs,
                                       router_dir),
        heavy=ExpertRecord.from_loaded(pair.heavy, heavy.model, costs["heavy"].params, costs["heavy"].macs,
                                       router_dir),
        signal=signal,
        threshold=point.threshold,
        objective=objective.as_dict(),
        calibration={
            "data": _data_label(data), "split_half": half, "split_seed": split_seed,
            "limit": options.limit, "samples": sweep.samples,
            "light_top1": round(sweep.light_top1, 4), "heavy_top1": round(sweep.heavy_top1, 4),
            "router_top1": round(point.top1, 4), "heavy_calls": point.heavy_calls,
            "heavy_fraction": round(point.heavy_fraction, 6),
            "signal_extra_macs": round(signal_macs),
            "cascade_macs": round(macs.cascade), "mixture_macs": round(macs.mixture),
            "cascade_vs_heavy": round(macs.cascade_vs_heavy, 6),
            "mixture_vs_heavy": round(macs.mixture_vs_heavy, 6),
        },
    )
    warnings = []
    if macs.cascade_vs_heavy > 1.0:
        warnings.append(
            f"the cascade costs {macs.cascade_vs_heavy:.3f}x the heavy expert alone in MACs (heavy fraction "
            f"{point.heavy_fraction:.3f} > break-even {macs.break_even_fraction:.3f} = 1 - C_light/C_heavy): "
            "routing does not pay here; use a cheaper or more accurate light expert, or --max-heavy-fraction")
    for warning in warnings:
        progress.log(f"warning: {warning}")
    write_router(out, spec)
    return CalibrationResult(spec, sweep, point, warnings)


# deprecated name ("calibrate" also meant calibration statistics and BatchNorm statistics)
calibrate_router = fit_threshold
