"""Statistics and reports of `agfprune compare`: paired differences with t-intervals over seeds,
ranks that show ties, the paper's three claims, results.json / results.md / accuracy.png.

All statistics are computed on the *report* half of the evaluation split (the second seeded half);
the *select* half is where choices (normaliser, learning rate, defaults) are made, so a number that
informed a choice is never the number reported. Whole-split means are kept for continuity.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agfprune.core.version import __version__
from agfprune.core.atomic import write_text_atomic

RESULTS_FORMAT = "agfprune-compare"
RESULTS_VERSION = 3
HALVES = ("select", "report")  # the first and second seeded halves of the evaluation split
SCRATCH = "scratch"
# claim 1's traditional metrics: the paper names magnitude, Wanda and RIA (weights, or weights times
# input-activation norms); bn-scale is the other weight-only score
TRADITIONAL = ("magnitude-l1", "magnitude-l2", "bn-scale", "wanda", "ria")
# two-sided 95 % Student t quantiles for 1..30 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)

# Cell fields that say how a cell ran, not what it measured: timings.json only, so that results.json
# reproduces byte for byte.
RUN_FIELDS = ("seconds", "threads", "world_size", "rank")


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (Cornish–Fisher beyond 30)."""
    if df < 1:
        raise ValueError("a t-interval needs at least 2 values")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95 % t-interval (None bounds with fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": round(mean, 4), "low": None, "high": None, "n": len(values)}
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4), "n": len(values)}


def paired_interval(first: dict[int, float], second: dict[int, float]) -> dict[str, Any] | None:
    """first − second over the seeds both have: mean and 95 % t-interval (None without common seeds)."""
    seeds = sorted(first.keys() & second.keys())
    if not seeds:
        return None
    return mean_interval([first[s] - second[s] for s in seeds])


def excludes_zero(interval: dict[str, Any] | None) -> int:
    """+1 when the interval lies above 0, −1 below, 0 when it contains 0 or is undefined."""
    if interval is None or interval["low"] is None:
        return 0
    return 1 if interval["low"] > 0 else (-1 if interval["high"] < 0 else 0)


def _sign(interval: dict[str, Any] | None) -> int | None:
    """excludes_zero, or None where there is no interval (one seed): unknown, not a tie."""
    return None if interval is None or interval["low"] is None else excludes_zero(interval)


def _value(cell: Any, stage: str, half: str = "report") -> float | None:
    """A cell's top-1 on one half (whole split for cells that predate halves)."""
    value = cell.halves.get(stage, {}).get(half)
    if value is None:
        value = cell.top1_pruned if stage == "pruned" else cell.top1_finetuned
    return value


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return round(mean, 4), round(std, 4)


def jaccard_overlaps(cells: list[Any], metrics: list[str], ratio: float,
                     allocation: str = "local") -> dict[str, dict[str, float]]:
    """Mean over seeds and groups of |kept_A ∩ kept_B| / |kept_A ∪ kept_B| for each metric pair."""
    by_key = {(c.metric, c.seed): c for c in cells if c.ratio == ratio and c.allocation == allocation}
    seeds = sorted({c.seed for c in cells})
    table: dict[str, dict[str, float]] = {}
    for first in metrics:
        table[first] = {}
        for second in metrics:
            values = []
            for seed in seeds:
                a, b = by_key.get((first, seed)), by_key.get((second, seed))
                if a is None or b is None:
                    continue
                for group in a.kept.keys() & b.kept.keys():
                    left, right = set(a.kept[group]), set(b.kept[group])
                    union = left | right
                    if union:
                        values.append(len(left & right) / len(union))
            table[first][second] = round(statistics.fmean(values), 4) if values else math.nan
    return table


def assign_ranks(rows: list[dict[str, Any]], per_seed: dict[str, dict[int, float]], stage: str) -> None:
    """rank = 1 + the number of metrics better beyond doubt (their paired 95 % interval against this
    one lies above 0); metrics nobody beats share rank 1, so ties show. With one seed (no interval)
    it falls back to the order of means, equal means tied. Baselines (scratch) get no rank."""
    ranked = [r for r in rows if r["metric"] != SCRATCH]
    for row in ranked:
        better = 0
        for other in ranked:
            if other is row:
                continue
            interval = paired_interval(per_seed[other["metric"]], per_seed[row["metric"]])
            if interval is not None and interval["low"] is None:  # a single seed: compare means
                better += interval["mean"] > 0
            else:
                better += excludes_zero(interval) > 0
        row[f"rank_{stage}"] = 1 + better
    for row in rows:
        if row["metric"] == SCRATCH:
            row[f"rank_{stage}"] = None


def summarize(loaded: Any, config: Any, cells: list[Any], dense_top1: float, dense_cost: Any,
              dense_halves: dict[str, float] | None = None, planned: int | None = None) -> dict[str, Any]:
    """Per metric, allocation and ratio: mean ± std (whole split and halves), the report-half mean
    with its 95 % interval, paired differences against random and the reference, ranks with ties."""
    stages = ["pruned"] + (["finetuned"] if config.finetune_epochs or any(c.metric == SCRATCH for c in cells) else [])
    reference = getattr(config, "reference", "agf")
    names = list(config.metrics) + ([SCRATCH] if SCRATCH in getattr(config, "baselines", []) else [])
    summary: list[dict[str, Any]] = []
    for ratio in config.ratios:
        for allocation in config.allocations:
            rows = []
            per_stage: dict[str, dict[str, dict[int, float]]] = {stage: {} for stage in stages}
            for metric in names:
                group = [c for c in cells if c.metric == metric and c.ratio == ratio and c.allocation == allocation]
                if not group:
                    continue
                row: dict[str, Any] = {"metric": metric, "allocation": allocation, "ratio": ratio,
                                       "seeds": len(group), "params": round(statistics.fmean(c.params for c in group)),
                                       "macs": round(statistics.fmean(c.macs for c in group))}
                for stage in stages:
                    values = [c.top1_pruned if stage == "pruned" else c.top1_finetuned for c in group]
                    if any(v is None for v in values):
                        continue
                    row[f"top1_{stage}_mean"], row[f"top1_{stage}_std"] = _mean_std(values)  # type: ignore[arg-type]
                    for half in HALVES:
                        halves = [c.halves.get(stage, {}).get(half) for c in group]
                        if all(v is not None for v in halves):
                            row[f"top1_{stage}_{half}_mean"], row[f"top1_{stage}_{half}_std"] = _mean_std(halves)
                    per_seed = {c.seed: _value(c, stage) for c in group}
                    per_stage[stage][metric] = per_seed  # type: ignore[assignment]
                    row[f"top1_{stage}_report"] = mean_interval(list(per_seed.values()))  # type: ignore[arg-type]
                rows.append(row)
            for stage in stages:
                present = [r for r in rows if r["metric"] in per_stage[stage]]
                assign_ranks(present, per_stage[stage], stage)
                for row in present:
                    mine = per_stage[stage][row["metric"]]
                    for name, other in (("random", "random"), ("reference", reference)):
                        if other == row["metric"] or other not in per_stage[stage]:
                            row[f"vs_{name}_{stage}"] = None
                        else:
                            row[f"vs_{name}_{stage}"] = paired_interval(mine, per_stage[stage][other])
                    if SCRATCH in per_stage[stage] and row["metric"] != SCRATCH and stage == "finetuned":
                        row["vs_scratch_finetuned"] = paired_interval(mine, per_stage[stage][SCRATCH])
                    row[f"beats_random_{stage}"] = (None if row[f"vs_random_{stage}"] is None
                                                    or row[f"vs_random_{stage}"]["low"] is None
                                                    else excludes_zero(row[f"vs_random_{stage}"]) > 0)
            summary.extend(rows)
    results = {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "agfprune_version": __version__,
        "model": loaded.arch,
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "fingerprint": loaded.fingerprint,
        "settings": {**config.cell_settings(), "metrics": config.metrics, "ratios": config.ratios,
                     "seeds": config.seeds, "allocations": config.allocations,
                     "baselines": list(getattr(config, "baselines", [])), "reference": reference,
                     **({"scratch_epochs": config.scratch_budget} if SCRATCH in getattr(config, "baselines", [])
                        else {})},
        "cells_done": len(cells),
        "cells_planned": planned if planned is not None else len(cells),
        "complete": planned is None or len(cells) == planned,
        "statistics": "report half; 95 % t-intervals over seeds of paired per-seed differences",
        "dense": {"top1": round(dense_top1, 4), "params": dense_cost.params, "macs": dense_cost.macs,
                  **({f"top1_{half}": value for half, value in dense_halves.items()} if dense_halves else {})},
        "summary": summary,
        "overlap": {f"{ratio:g}/{allocation}": jaccard_overlaps(cells, config.metrics, ratio, allocation)
                    for ratio in config.ratios for allocation in config.allocations},
        "cells": [{k: v for k, v in asdict(c).items() if k not in ("kept", "settings_key", *RUN_FIELDS)}
                  for c in cells],
    }
    results["claims"] = claims(results)
    return results


# ---------------------------------------------------------------------------------------------
# The paper's claims, decided from the intervals


def _stages(results: dict[str, Any]) -> list[str]:
    """The stages the run measured, in order: "pruned", then "finetuned" when any cell was finetuned."""
    finetuned = any("top1_finetuned_report" in r for r in results["summary"])
    return ["pruned", "finetuned"] if finetuned else ["pruned"]


def _fmt(interval: dict[str, Any] | None, difference: bool = True) -> str:
    """A difference as "+1.23 [−0.50, +2.96]"; a level as "71.20 ± 1.73" (half-width)."""
    if interval is None:
        return "–"
    sign = "+" if difference else ""
    if interval["low"] is None:
        return f"{interval['mean']:{sign}.2f}" + (" (1 seed)" if difference else "")
    if difference:
        return f"{interval['mean']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]"
    return f"{interval['mean']:.2f} ± {(interval['high'] - interval['low']) / 2:.2f}"


def _claim1_verdict(agf_sign: int | None, signs: dict[str, int | None]) -> str:
    """Claim 1 from the signs of the paired intervals against random (+1 above, −1 below, 0 contains 0,
    None: fewer than two seeds, so no interval). The paper says traditional metrics fall "to or below"
    random: a tie with random is the weak form; a metric without an interval decides nothing."""
    if agf_sign == -1 or any(s == 1 for s in signs.values()):
        return "does not hold"
    unknown = [m for m, s in signs.items() if s is None] + (["agf"] if agf_sign is None else [])
    if unknown:
        return f"cannot be decided at this budget ({', '.join(unknown)} with one seed)"
    tied = [m for m, s in signs.items() if s == 0]
    if agf_sign > 0:
        return "holds" if not tied else ("holds as 'to or below': AGF above random, no traditional metric above "
                                         f"it beyond doubt ({', '.join(tied)} tied with random)")
    if not tied:
        return "holds in part: traditional metrics below random, AGF tied with random"
    return "cannot be decided at this budget"


def _claim3(results: dict[str, Any], scoring: list[dict[str, Any]], ranked: list[dict[str, Any]], stage: str,
            ratio: float, allocation: str) -> dict[str, Any]:
    """Claim 3 at the largest ratio: the scoring metrics (random excluded: it is the floor they are
    measured against) hit a ceiling when none is better than another beyond doubt. Whether random
    lies below them is said beside the verdict, not folded into it."""
    key = f"top1_{stage}_report"
    best = max(scoring, key=lambda r: r[key]["mean"])
    dense = results["dense"].get("top1_report", results["dense"]["top1"])
    random_row = next((r for r in ranked if r["metric"] == "random"), None)
    if all(r["seeds"] < 2 for r in scoring):
        verdict = "cannot be decided at this budget"
    elif all(r[f"rank_{stage}"] == 1 for r in scoring):
        floor = ("" if random_row is None else "; random below them beyond doubt" if random_row[f"rank_{stage}"] > 1
                 else "; random tied with them")
        verdict = (f"holds: no scoring metric better than another beyond doubt{floor}; best "
                   f"{dense - best[key]['mean']:.1f} points below dense")
    else:  # rank 1 = no metric better beyond doubt; the others are below at least one metric
        verdict = ("does not hold: " + ", ".join(r["metric"] for r in scoring if r[f"rank_{stage}"] > 1)
                   + " below another scoring metric beyond doubt (not beaten: "
                   + ", ".join(r["metric"] for r in scoring if r[f"rank_{stage}"] == 1) + ")")
    return {"claim": 3, "ratio": ratio, "allocation": allocation, "stage": stage, "verdict": verdict,
            "best": best["metric"], "best_top1": best[key]["mean"]}


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Claim 1 (traditional metrics at or below random, AGF above) per ratio, allocation and stage
    (after BatchNorm re-estimation and after finetuning), claim 2 (AGF above the same shape trained
    from scratch) per ratio and allocation, and claim 3 (a ceiling: at the largest ratio no metric is
    better than another beyond doubt) per allocation, on the last stage."""
    stages = _stages(results)
    stage = stages[-1]
    out: list[dict[str, Any]] = []
    rows = results["summary"]
    ratios = results["settings"]["ratios"]
    for allocation in results["settings"]["allocations"]:
        for ratio in ratios:
            here = {r["metric"]: r for r in rows if r["ratio"] == ratio and r["allocation"] == allocation}
            agf = here.get("agf")
            traditional = [here[m] for m in TRADITIONAL if m in here]
            if agf is not None and traditional and "random" in here:
                for when in stages:
                    signs = {r["metric"]: _sign(r.get(f"vs_random_{when}")) for r in traditional}
                    verdict = _claim1_verdict(_sign(agf.get(f"vs_random_{when}")), signs)
                    evidence = {r["metric"]: _fmt(r.get(f"vs_random_{when}")) for r in [agf, *traditional]}
                    out.append({"claim": 1, "ratio": ratio, "allocation": allocation, "stage": when,
                                "verdict": verdict, "vs_random": evidence})
            if agf is not None and SCRATCH in here and stage == "finetuned":
                interval = agf.get("vs_scratch_finetuned")
                sign = excludes_zero(interval)
                verdict = ("holds" if sign > 0 else "does not hold" if sign < 0
                           else "cannot be decided at this budget")
                out.append({"claim": 2, "ratio": ratio, "allocation": allocation, "stage": stage,
                            "verdict": verdict, "agf_minus_scratch": _fmt(interval)})
        if not ratios:
            continue
        top = max(ratios)
        here = [r for r in rows if r["ratio"] == top and r["allocation"] == allocation and r["metric"] != SCRATCH]
        ranked = [r for r in here if r.get(f"rank_{stage}") is not None]
        scoring = [r for r in ranked if r["metric"] != "random"]  # random is the floor, not a static score
        if len(scoring) > 1:
            out.append(_claim3(results, scoring, ranked, stage, top, allocation))
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


def render_markdown(results: dict[str, Any], timings: dict[str, float] | None = None) -> str:
    """results.md: per ratio and allocation the report-half top-1 (mean ± 95 % half-width), paired
    differences against random and the reference, ranks with ties; the claims; cell wall times."""
    settings = results["settings"]
    stages = _stages(results)
    dense = results["dense"]
    reference = settings.get("reference", "agf")
    budget = (f"finetuning {settings['finetune_epochs']} epoch(s) × {settings['finetune_limit'] or 'all'} images"
              + (" distilled from the dense model" if settings.get("finetune_teacher") else ""))
    lines = [f"# agfprune compare: {results['model']}", ""]
    if not results.get("complete", True):
        lines += [f"**Partial: {results['cells_done']} of {results['cells_planned']} cells finished.** "
                  "Rows average the seeds that exist.", ""]
    lines += [f"Dense: top-1 {dense['top1']:.2f}% (report half {dense.get('top1_report', dense['top1']):.2f}%), "
              f"{dense['params']:,} params, {dense['macs']:,} MACs. Seeds: {settings['seeds']}; calibration "
              f"{settings['calib_batches']}×{settings['calib_batch_size']} images; BN recalibration "
              f"{settings['bn_batches']} batches; {budget}; learning rate {settings['finetune_lr']:g}; normaliser "
              f"{settings.get('normalizer') or 'each metric default'}"
              + (f"; scratch baseline: the {reference} shape re-initialised and trained "
                 f"{settings['scratch_epochs']} epoch(s)" if "scratch_epochs" in settings else "") + ".", "",
              "Which half: every number below (top-1, differences, ranks, claims) is on the **report** half of the "
              "evaluation split; the **select** half (column `select`) is the one to make choices on "
              "(normaliser, learning rate, defaults). `top-1` is the mean ± the half-width of its 95 % "
              f"t-interval over seeds; `vs random` / `vs {reference}` are paired per-seed differences "
              "(same allocation, ratio and seed) with their 95 % interval; `beats random` only when that "
              "interval lies above 0. `rank` = 1 + the number of metrics better beyond doubt, so equal ranks "
              "are ties.", ""]
    for ratio in settings["ratios"]:
        for allocation in settings.get("allocations", ["local"]):
            rows = [r for r in results["summary"] if r["ratio"] == ratio and r.get("allocation", "local") == allocation]
            if not rows:
                continue
            header = ["metric", "seeds", "params", "MACs"]
            for stage in stages:
                header += [f"top-1 {stage}", "select", "vs random", f"vs {reference}", "rank", "beats random"]
            if timings is not None:
                header.append("wall s/cell")
            lines += [f"## ratio {ratio:g} ({settings['target']}), {allocation} allocation", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            last = stages[-1]
            ordered = sorted(rows, key=lambda r: (r["metric"] == SCRATCH, r.get(f"rank_{last}") or 0,
                                                  -(r.get(f"top1_{last}_report") or {"mean": 0})["mean"]))
            for row in ordered:
                cells = [row["metric"], str(row["seeds"]),
                         f"{row['params']:,} ({100 * (1 - row['params'] / dense['params']):.0f}% less)",
                         f"{row['macs']:,} ({100 * (1 - row['macs'] / dense['macs']):.0f}% less)"]
                for stage in stages:
                    if f"top1_{stage}_report" not in row or (row["metric"] == SCRATCH and stage == "pruned"):
                        cells += ["–"] * 6
                        continue
                    beats = row.get(f"beats_random_{stage}")
                    select = row.get(f"top1_{stage}_select_mean")
                    rank = row.get(f"rank_{stage}")
                    cells += [_fmt(row[f"top1_{stage}_report"], difference=False),
                              "–" if select is None else f"{select:.2f}",
                              _fmt(row.get(f"vs_random_{stage}")), _fmt(row.get(f"vs_reference_{stage}")),
                              "–" if rank is None else str(rank),
                              "–" if beats is None else ("yes" if beats else "no")]
                if timings is not None:
                    seconds = [timings[key] for key in _cell_keys(row, settings) if key in timings]
                    cells.append(f"{statistics.fmean(seconds):.0f}" if seconds else "–")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            overlap = results["overlap"].get(f"{ratio:g}/{allocation}", {})
            names = [name for name in overlap if any(not math.isnan(v) for v in overlap[name].values())]
            if len(names) > 1:
                lines += ["Jaccard overlap of kept channels (mean over groups and seeds):", "",
                          "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
                for first in names:
                    lines.append(f"| {first} | " + " | ".join(f"{overlap[first][second]:.2f}" for second in names) + " |")
                lines.append("")
    if results.get("claims"):
        lines += ["## The paper's claims", "",
                  "1. at high compression traditional metrics (" + ", ".join(TRADITIONAL) + ") fall to or below "
                  "random while AGF stays above it (decided after BN re-estimation and after finetuning); "
                  "2. AGF-pruned networks beat the same shape trained from scratch; 3. at the largest ratio the "
                  "static scoring metrics hit a ceiling (none better than another beyond doubt; random is the "
                  "floor, not one of them).", "",
                  "| claim | ratio | allocation | stage | verdict | evidence (paired difference, 95 % interval) |",
                  "|---|---|---|---|---|---|"]
        for claim in results["claims"]:
            if claim["claim"] == 1:
                evidence = "; ".join(f"{m} − random {v}" for m, v in claim["vs_random"].items())
            elif claim["claim"] == 2:
                evidence = f"agf − scratch {claim['agf_minus_scratch']}"
            else:
                evidence = f"best {claim['best']} {claim['best_top1']:.2f}%"
            lines.append(f"| {claim['claim']} | {claim['ratio']:g} | {claim['allocation']} | {claim['stage']} "
                         f"| {claim['verdict']} "
                         f"| {evidence} |")
        lines.append("")
    if timings:
        total = sum(timings.values())
        lines += [f"Cell wall time: {len(timings)} cells, {total / 3600:.2f} h in all, "
                  f"mean {total / len(timings):.0f} s (timings.json has each).", ""]
    return "\n".join(lines)


def _cell_keys(row: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    return [f"{row['metric']}_{row['allocation']}_r{row['ratio']:g}_s{seed}" for seed in range(settings["seeds"])]


# one colour per metric (tab10 without its grey, which marks scratch), one marker and line per allocation
METRIC_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                 "tab:olive", "tab:cyan")
ALLOCATION_STYLE = {"local": ("o", "-"), "global": ("s", "--"), "global-cost": ("^", "-.")}


def line_style(metric: str, allocation: str, metrics: list[str]) -> dict[str, str]:
    """A metric keeps its colour across allocations and scratch is always grey and dotted, so a
    reader can match lines by colour (metric) and marker (allocation) with a dozen lines."""
    marker, linestyle = ALLOCATION_STYLE.get(allocation, ("D", "-"))
    if metric == SCRATCH:
        return {"color": "grey", "linestyle": ":", "marker": marker}
    return {"color": METRIC_COLORS[metrics.index(metric) % len(METRIC_COLORS)], "marker": marker,
            "linestyle": linestyle}


def write_plot(path: Path, results: dict[str, Any]) -> None:
    """Top-1 (report half, mean with 95 % interval) against the share of parameters removed, one
    line per metric and allocation; dense and scratch as reference lines; the axis fitted to the
    pruned results. One panel per stage. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agfprune.core.atomic import atomic_path

    stages = _stages(results)
    dense = results["dense"]
    dense_top1 = dense.get("top1_report", dense["top1"])
    allocations = results["settings"].get("allocations", ["local"])
    figure, axes = plt.subplots(1, len(stages), figsize=(6.5 * len(stages), 4.8), squeeze=False)
    for axis, stage in zip(axes[0], stages):
        shown: list[float] = []
        for metric in results["settings"]["metrics"] + [SCRATCH]:
            if metric == SCRATCH and stage == "pruned":
                continue
            for allocation in allocations:
                rows = sorted((r for r in results["summary"] if r["metric"] == metric
                               and r.get("allocation", "local") == allocation and f"top1_{stage}_report" in r),
                              key=lambda r: r["params"], reverse=True)
                if not rows:
                    continue
                x = [100 * (1 - r["params"] / dense["params"]) for r in rows]
                y = [r[f"top1_{stage}_report"]["mean"] for r in rows]
                low = [r[f"top1_{stage}_report"]["low"] for r in rows]
                high = [r[f"top1_{stage}_report"]["high"] for r in rows]
                error = None
                if all(v is not None for v in low + high):
                    error = [[m - lo for m, lo in zip(y, low)], [hi - m for m, hi in zip(y, high)]]
                    shown += low + high
                shown += y
                label = metric if len(allocations) == 1 else f"{metric} ({allocation})"
                axis.errorbar(x, y, yerr=error, capsize=3, label=label,
                              **line_style(metric, allocation, results["settings"]["metrics"]))
        if shown:
            span = max(shown) - min(shown)
            margin = max(1.0, 0.08 * span)
            bottom, top = min(shown) - margin, max(shown) + margin
            if dense_top1 <= top + 2 * margin:  # show the dense line when it is near the results
                top = max(top, dense_top1 + margin)
            axis.set_ylim(bottom, top)
        axis.axhline(dense_top1, color="black", linestyle="--", linewidth=1, label=f"dense {dense_top1:.1f}%")
        axis.set_xlabel("parameters removed (%)")
        axis.set_ylabel("top-1 on the report half (%)")
        when = "right after pruning (BatchNorm re-estimated)" if stage == "pruned" else "after finetuning"
        axis.set_title(f"{results['model']}: {when}")
        axis.grid(alpha=0.3)
    # beside the panels, not over them: a full grid has 19 lines, and an inner legend hid the 0.75 points
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)


def write_outputs(out: Path, results: dict[str, Any], cells: list[Any],
                  timings: dict[str, float] | None = None) -> None:
    import json

    write_text_atomic(out / "results.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_text_atomic(out / "results.md", render_markdown(results, timings or {}))
    write_plot(out / "accuracy.png", results)
