"""The metric comparison: cells, resumption, exact reproduction, summary logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agfprune.core import compare as compare_module
from agfprune.core.compare import Cell, CompareConfig, jaccard_overlaps, run_compare, summarize
from agfprune.core.device import resolve_device
from agfprune.core.errors import UsageError
from agfprune.core.evaluate import ModelCost
from agfprune.core.models import load_model


def _config(out: Path, **overrides) -> CompareConfig:
    settings = dict(calib_data="synthetic:96", eval_data="synthetic:64", out=out, metrics=["agf", "random"],
                    ratios=[0.5], seeds=2, calib_batches=2, calib_batch_size=16, bn_batches=2,
                    eval_batch_size=64, finetune_epochs=1, finetune_limit=32, finetune_batch_size=16)
    settings.update(overrides)
    return CompareConfig(**settings)


@pytest.fixture(scope="module")
def dense():
    import torch

    torch.manual_seed(0)
    return load_model("cifar_resnet20")


def test_compare_writes_reports_and_reproduces_exactly(dense, tmp_path: Path) -> None:
    device = resolve_device("cpu")
    first = run_compare(dense, _config(tmp_path / "a"), device)
    for name in ("results.json", "results.md", "accuracy.png", "timings.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert len(list((tmp_path / "a" / "cells").glob("*.json"))) == 4
    rows = {row["metric"]: row for row in first["summary"]}
    assert rows["agf"]["params"] < first["dense"]["params"] * 0.4
    assert rows["agf"]["seeds"] == 2 and rows["random"]["beats_random_pruned"] is None
    assert first["overlap"]["0.5/local"]["agf"]["agf"] == 1.0
    run_compare(dense, _config(tmp_path / "b"), device)
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()


def test_finished_cells_are_reused(dense, tmp_path: Path) -> None:
    device = resolve_device("cpu")
    config = _config(tmp_path, metrics=["magnitude-l1"], seeds=1, finetune_epochs=0)
    run_compare(dense, config, device)
    cell_path = tmp_path / "cells" / "magnitude-l1_local_r0.5_s0.json"
    data = json.loads(cell_path.read_text())
    data["top1_pruned"] = 42.0  # a reused cell keeps its stored value
    cell_path.write_text(json.dumps(data))
    (tmp_path / "timings.json").unlink()
    again = run_compare(dense, config, device)
    assert again["summary"][0]["top1_pruned_mean"] == 42.0
    # the reused cell's stored wall time is reported again; it never enters results.json
    timings = json.loads((tmp_path / "timings.json").read_text())["cells"]
    assert timings == {"magnitude-l1_local_r0.5_s0": data["seconds"]} and data["seconds"] > 0
    assert "seconds" not in (tmp_path / "results.json").read_text()
    changed = _config(tmp_path, metrics=["magnitude-l1"], seeds=1, finetune_epochs=0, bn_batches=1)
    assert run_compare(dense, changed, device)["summary"][0]["top1_pruned_mean"] != 42.0


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown metric"):
        _config(tmp_path, metrics=["agf", "nope"]).validate()
    with pytest.raises(UsageError, match="--ratio"):
        _config(tmp_path, ratios=[1.5]).validate()
    with pytest.raises(UsageError, match="--seeds"):
        _config(tmp_path, seeds=0).validate()


def _cell(metric: str, seed: int, top1: float, kept: list[int]) -> Cell:
    return Cell(metric=metric, ratio=0.5, seed=seed, top1_pruned=top1, top1_finetuned=None, loss_pruned=1.0,
                params=10, macs=10, kept={"g": kept})


def test_summary_ranks_and_random_test(dense, tmp_path: Path) -> None:
    cells = [_cell("agf", 0, 60, [0, 1]), _cell("agf", 1, 62, [0, 1]),
             _cell("random", 0, 40, [2, 3]), _cell("random", 1, 44, [1, 3]),
             _cell("wanda", 0, 41, [0, 3]), _cell("wanda", 1, 43, [0, 2])]
    config = _config(tmp_path, metrics=["agf", "random", "wanda"], finetune_epochs=0)
    summary = {r["metric"]: r for r in summarize(dense, config, cells, 90.0, ModelCost(20, 20))["summary"]}
    # agf − random per seed: 20, 18 → mean 19, sd √2, 95 % t (1 df) half-width 12.706·√2/√2 = 12.706
    assert summary["agf"]["vs_random_pruned"] == {"mean": 19.0, "low": 6.294, "high": 31.706, "n": 2}
    assert summary["agf"]["beats_random_pruned"] is True
    # wanda − random: 1, −1 → the interval contains 0: no "beats", and wanda ties random in rank
    assert summary["wanda"]["beats_random_pruned"] is False
    assert summary["wanda"]["rank_pruned"] == summary["random"]["rank_pruned"] == 2
    assert summary["agf"]["rank_pruned"] == 1
    assert summary["agf"]["top1_pruned_std"] == pytest.approx(1.4142, abs=1e-3)
    assert summary["wanda"]["vs_reference_pruned"]["mean"] == -19.0 and summary["agf"]["vs_reference_pruned"] is None
    overlap = jaccard_overlaps(cells, ["agf", "random"], 0.5)
    assert overlap["agf"]["random"] == pytest.approx((0 / 4 + 1 / 3) / 2, abs=1e-4)


def test_t_quantiles_and_intervals() -> None:
    import statistics

    from agfprune.core.compare_report import mean_interval, paired_interval, t_quantile

    assert t_quantile(2) == 4.303 and t_quantile(200) == pytest.approx(1.9719, abs=1e-3)
    values = [1.0, 2.0, 4.0]
    half = 4.303 * statistics.stdev(values) / 3**0.5
    assert mean_interval(values)["low"] == pytest.approx(7 / 3 - half, abs=1e-4)
    assert paired_interval({0: 5.0}, {0: 3.0}) == {"mean": 2.0, "low": None, "high": None, "n": 1}
    assert paired_interval({0: 5.0}, {1: 3.0}) is None


def test_ties_in_rank_and_claims(dense, tmp_path: Path) -> None:
    """Two metrics within each other's interval share a rank; the claims follow the intervals."""
    def cell(metric: str, seed: int, top1: float) -> Cell:
        return Cell(metric=metric, ratio=0.75, seed=seed, top1_pruned=top1, top1_finetuned=top1, loss_pruned=1.0,
                    params=10, macs=10, halves={"finetuned": {"select": top1, "report": top1}})
    # taylor's mean is higher than agf's, but not beyond doubt (paired differences 2, −3, 2): a tie
    tops = {"agf": (70, 72, 71), "taylor": (72, 69, 73), "magnitude-l2": (50, 52, 51), "random": (60, 61, 62),
            "scratch": (40, 41, 42)}
    cells = [cell(m, s, v) for m, values in tops.items() for s, v in enumerate(values)]
    config = _config(tmp_path, metrics=["agf", "taylor", "magnitude-l2", "random"], ratios=[0.75], seeds=3,
                     baselines=["scratch"])
    results = summarize(dense, config, cells, 90.0, ModelCost(20, 20))
    rows = {r["metric"]: r for r in results["summary"]}
    assert rows["agf"]["rank_finetuned"] == rows["taylor"]["rank_finetuned"] == 1
    assert rows["random"]["rank_finetuned"] == 3 and rows["magnitude-l2"]["rank_finetuned"] == 4
    assert rows["scratch"]["rank_finetuned"] is None
    verdicts = {c["claim"]: c["verdict"] for c in results["claims"]}
    assert verdicts[1] == "holds" and verdicts[2] == "holds"
    assert verdicts[3] == ("does not hold: magnitude-l2 below another scoring metric beyond doubt "
                           "(not beaten: agf, taylor)")
    flipped = [cell(m, s, v if m != "magnitude-l2" else v + 20) for m, values in tops.items()
               for s, v in enumerate(values)]
    verdicts = {c["claim"]: c["verdict"] for c in summarize(dense, config, flipped, 90.0, ModelCost(20, 20))["claims"]}
    assert verdicts[1] == "does not hold"
    tied = [cell(m, s, v if m != "agf" else (60, 62, 61)[s]) for m, values in tops.items() for s, v in enumerate(values)]
    verdicts = {c["claim"]: c["verdict"] for c in summarize(dense, config, tied, 90.0, ModelCost(20, 20))["claims"]}
    assert verdicts[1].startswith("holds in part")  # AGF ties random: not "holds"
    # claim 3 without magnitude-l2: agf and taylor tie, random lies below them, and random is the floor
    # the scoring metrics are measured against, not one of them: a ceiling, with random named beside it
    config = _config(tmp_path, metrics=["agf", "taylor", "random"], ratios=[0.75], seeds=3, baselines=["scratch"])
    ceiling = [c for c in summarize(dense, config, [c for c in cells if c.metric != "magnitude-l2"], 90.0,
                                    ModelCost(20, 20))["claims"] if c["claim"] == 3][0]
    assert ceiling["verdict"].startswith("holds: no scoring metric better than another beyond doubt; random below")
    assert ceiling["best"] == "taylor" and "best 18.7 points below dense" in ceiling["verdict"]  # 90 − 71.33


def test_claim_one_reads_to_or_below_and_counts_wanda_and_ria(dense, tmp_path: Path) -> None:
    """Claim 1 is decided at both stages; a traditional metric tied with random is the paper's "to or
    below"; Wanda and RIA are traditional metrics, so one above random refutes the claim."""
    def cell(metric: str, seed: int, pruned: float, finetuned: float) -> Cell:
        return Cell(metric=metric, ratio=0.75, seed=seed, top1_pruned=pruned, top1_finetuned=finetuned,
                    loss_pruned=1.0, params=10, macs=10,
                    halves={"pruned": {"select": pruned, "report": pruned},
                            "finetuned": {"select": finetuned, "report": finetuned}})
    # pruned: magnitude-l2 − random = 1, −1, 0 (a tie); finetuned: 10 below random every seed
    tops = {"agf": ((20, 21, 22), (70, 71, 72)), "random": ((10, 11, 12), (60, 61, 62)),
            "magnitude-l2": ((11, 10, 12), (50, 51, 52))}
    cells = [cell(m, s, p, f) for m, (ps, fs) in tops.items() for s, (p, f) in enumerate(zip(ps, fs))]
    config = _config(tmp_path, metrics=list(tops), ratios=[0.75], seeds=3)
    verdicts = {c["stage"]: c["verdict"] for c in summarize(dense, config, cells, 90.0, ModelCost(20, 20))["claims"]
                if c["claim"] == 1}
    assert verdicts["finetuned"] == "holds"
    assert verdicts["pruned"].startswith("holds as 'to or below'") and "magnitude-l2" in verdicts["pruned"]
    with_ria = cells + [cell("ria", s, 10 + s, 63 + s) for s in range(3)]  # 3 points above random every seed
    config = _config(tmp_path, metrics=[*tops, "ria"], ratios=[0.75], seeds=3)
    claim = [c for c in summarize(dense, config, with_ria, 90.0, ModelCost(20, 20))["claims"]
             if c["claim"] == 1 and c["stage"] == "finetuned"][0]
    assert claim["verdict"] == "does not hold" and claim["vs_random"]["ria"] == "+3.00 [+3.00, +3.00]"
    # a traditional metric measured at one seed has no interval: unknown, not a tie with random
    one_seed = cells + [cell("wanda", 0, 10, 60)]
    config = _config(tmp_path, metrics=[*tops, "wanda"], ratios=[0.75], seeds=3)
    verdicts = {c["stage"]: c["verdict"] for c in summarize(dense, config, one_seed, 90.0, ModelCost(20, 20))["claims"]
                if c["claim"] == 1}
    assert verdicts["finetuned"] == "cannot be decided at this budget (wanda with one seed)"


def test_allocations_are_crossed_and_halves_partition_the_evaluation(dense, tmp_path: Path) -> None:
    results = run_compare(dense, _config(tmp_path, allocations=["local", "global", "global-cost"], target="params",
                                         seeds=1, finetune_epochs=0), resolve_device("cpu"))
    cells = results["cells"]
    assert sorted((c["metric"], c["allocation"]) for c in cells) == sorted(
        (m, a) for m in ("agf", "random") for a in ("local", "global", "global-cost"))
    for cell in cells:
        halves = cell["halves"]["pruned"]
        # 64 images: the two disjoint halves of 32 average to the whole split's top-1
        assert (halves["select"] + halves["report"]) / 2 == pytest.approx(cell["top1_pruned"], abs=1e-3)
    assert {row["allocation"] for row in results["summary"]} == {"local", "global", "global-cost"}
    assert "global-cost allocation" in (tmp_path / "results.md").read_text()


def test_cost_aware_allocation_needs_a_params_or_macs_target(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--cost-aware"):
        _config(tmp_path, allocations=["global-cost"]).validate()
    with pytest.raises(UsageError, match="--allocation"):
        _config(tmp_path, allocations=["globl"]).validate()


def test_prune_heads_removes_whole_heads_in_every_cell(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    vit = load_model("vit_tiny_patch16_224", timm_kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=2,
                                                              num_heads=4, num_classes=10))
    results = run_compare(vit, _config(tmp_path, metrics=["agf"], allocations=["local", "global"], seeds=1,
                                       finetune_epochs=0, prune_heads=True, bn_batches=0), resolve_device("cpu"))
    assert len(results["cells"]) == 2
    for cell in json.loads((tmp_path / "results.json").read_text())["cells"]:
        assert cell["params"] < results["dense"]["params"]
    assert results["settings"]["prune_heads"] is True


def test_scratch_baseline_takes_the_reference_shape_and_the_same_budget(dense, tmp_path: Path) -> None:
    results = run_compare(dense, _config(tmp_path, seeds=1, baselines=["scratch"], finetune_teacher=True,
                                         allocations=["global"]), resolve_device("cpu"))
    cells = {c["metric"]: c for c in results["cells"]}
    assert cells["scratch"]["params"] == cells["agf"]["params"] < results["dense"]["params"]
    stored = {p.name.split("_")[0]: json.loads(p.read_text())["kept"] for p in (tmp_path / "cells").glob("*.json")}
    assert stored["scratch"] == stored["agf"] != stored["random"]  # the reference's shape, not another metric's
    assert cells["scratch"]["top1_finetuned"] is not None
    assert "vs_scratch_finetuned" in next(r for r in results["summary"] if r["metric"] == "agf")
    assert "scratch" in (tmp_path / "results.md").read_text()
    with pytest.raises(UsageError, match="--reference"):
        _config(tmp_path, baselines=["scratch"], reference="taylor").validate()
    with pytest.raises(UsageError, match="--scratch-epochs"):
        _config(tmp_path, baselines=["scratch"], finetune_epochs=0).validate()


def test_reinitialise_redraws_weights_and_keeps_the_shortcut_map(dense) -> None:
    import copy

    import torch

    from agfprune.core.compare import reinitialise

    model = copy.deepcopy(dense.model)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.mul_(0)
        # a pruned shortcut maps kept channels, not the dense shifted identity its reset would redraw
        model.layer2[0].shortcut.weight.copy_(model.layer2[0].shortcut.weight.flip(0))
    shortcut = model.layer2[0].shortcut.weight.clone()
    reinitialise(model, seed=3)
    conv = model.layer3[1].conv2.weight
    fan_in = conv.shape[1] * 9
    assert conv.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)  # He-normal, the model's own init
    assert model.bn1.weight.eq(1).all() and model.bn1.bias.eq(0).all()
    assert torch.equal(model.layer2[0].shortcut.weight, shortcut) and not model.layer2[0].shortcut.weight.requires_grad
    again = reinitialise(copy.deepcopy(model), seed=3)
    assert torch.equal(again.layer3[1].conv2.weight, conv)


def test_ranks_split_the_cells_and_rank_zero_merges_identically(dense, tmp_path: Path, monkeypatch) -> None:
    """Rank 1 of 2 computes the odd cells only; rank 0 computes the even ones, picks up rank 1's
    files and writes the same results.json as one process; a lost cell is recomputed on re-run."""
    device = resolve_device("cpu")
    single = _config(tmp_path / "single", finetune_epochs=0)
    run_compare(dense, single, device)
    shared = tmp_path / "shared"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_compare(dense, _config(shared, finetune_epochs=0), device) is None
    assert sorted(p.name for p in (shared / "cells").glob("*.json")) == ["random_local_r0.5_s0.json",
                                                                      "random_local_r0.5_s1.json"]
    monkeypatch.setenv("RANK", "0")
    # under torchrun rank 0 would have broadcast the unfinished cells it saw before rank 1 wrote any
    monkeypatch.setattr(compare_module, "agree_with_rank_zero", lambda unfinished: [0, 1, 2, 3])
    run_compare(dense, _config(shared, finetune_epochs=0), device)
    assert (shared / "results.json").read_bytes() == (tmp_path / "single" / "results.json").read_bytes()
    (shared / "cells" / "agf_local_r0.5_s1.json").unlink()  # a rank killed before writing its cell
    monkeypatch.undo()
    monkeypatch.setenv("WORLD_SIZE", "1")
    run_compare(dense, _config(shared, finetune_epochs=0), device)
    assert (shared / "results.json").read_bytes() == (tmp_path / "single" / "results.json").read_bytes()


def test_a_resumed_run_deals_the_unfinished_cells_over_every_rank(dense, tmp_path: Path, monkeypatch) -> None:
    """Plan: agf s0, random s0, agf s1, random s1. With both agf cells done, the unfinished cells sit at
    plan positions 1 and 3, both rank 1's under index % 2: each rank must get one of them instead."""
    device = resolve_device("cpu")
    run_compare(dense, _config(tmp_path, metrics=["agf"], finetune_epochs=0), device)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_compare(dense, _config(tmp_path, finetune_epochs=0), device) is None
    assert not (tmp_path / "cells" / "random_local_r0.5_s0.json").exists()
    rank_one = json.loads((tmp_path / "cells" / "random_local_r0.5_s1.json").read_text())
    assert (rank_one["rank"], rank_one["world_size"]) == (1, 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(compare_module, "agree_with_rank_zero", lambda unfinished: [1, 3])
    run_compare(dense, _config(tmp_path, finetune_epochs=0), device)
    ran_with = json.loads((tmp_path / "timings.json").read_text())["ran_with"]
    assert {key: value["rank"] for key, value in ran_with.items()} == {
        "agf_local_r0.5_s0": 0, "agf_local_r0.5_s1": 0, "random_local_r0.5_s0": 0, "random_local_r0.5_s1": 1}


def test_report_only_writes_a_partial_report_without_computing(dense, tmp_path: Path, monkeypatch) -> None:
    device = resolve_device("cpu")
    run_compare(dense, _config(tmp_path, metrics=["random"], seeds=1, finetune_epochs=0), device)
    # the report is written under another rank count: timings.json must keep the computing run's
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    partial = run_compare(dense, _config(tmp_path, seeds=2, finetune_epochs=0, report_only=True), device)
    assert partial["complete"] is False and (partial["cells_done"], partial["cells_planned"]) == (1, 4)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 1
    assert "Partial: 1 of 4 cells" in (tmp_path / "results.md").read_text()
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["ran_with"] == {"random_local_r0.5_s0": {"rank": 0, "threads": torch.get_num_threads(),
                                                            "world_size": 1}}
    assert "world_size" not in (tmp_path / "results.json").read_text()


def test_plot_lines_keep_a_colour_per_metric_and_grey_for_scratch() -> None:
    """Twelve lines (five metrics × two allocations + scratch) once cycled tab10 into scratch's grey."""
    from agfprune.core.compare_report import line_style

    metrics = ["agf", "taylor", "magnitude-l2", "wanda", "random", "ria", "snip", "bn-scale", "magnitude-l1"]
    styles = {(m, a): line_style(m, a, metrics) for m in metrics + ["scratch"] for a in ("local", "global")}
    colours = {styles[(m, "local")]["color"] for m in metrics}
    assert len(colours) == len(metrics) and "grey" not in colours
    assert all(styles[(m, "local")]["color"] == styles[(m, "global")]["color"] for m in metrics)
    assert styles[("agf", "local")]["marker"] != styles[("agf", "global")]["marker"]
    assert styles[("scratch", "global")]["color"] == "grey"
