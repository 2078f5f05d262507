"""The metric comparison: cells, resumption, exact reproduction, summary logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agfprune.core.compare import Cell, CompareConfig, jaccard_overlaps, run_compare, summarise
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
    assert not (tmp_path / "timings.json").exists()
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
    summary = {r["metric"]: r for r in summarise(dense, config, cells, 90.0, ModelCost(20, 20))["summary"]}
    assert summary["agf"]["rank_pruned"] == 1 and summary["agf"]["beats_random_pruned"] is True
    assert summary["wanda"]["beats_random_pruned"] is False
    assert summary["agf"]["top1_pruned_std"] == pytest.approx(1.4142, abs=1e-3)
    overlap = jaccard_overlaps(cells, ["agf", "random"], 0.5)
    assert overlap["agf"]["random"] == pytest.approx((0 / 4 + 1 / 3) / 2, abs=1e-4)


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
