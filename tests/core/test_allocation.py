"""Allocation: the pruner keeps the highest-scoring channels (per group and globally), global
ranking uses raw loss units, cost-aware ranking divides by what a channel frees, and impossible
requests are refused before anything is written."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp

from agfprune.core.errors import UsageError
from agfprune.core.metrics import get_metric
from agfprune.core.models import load_model
from agfprune.core.pruning import PruneOptions, StoredScorer, prune_model
from agfprune.core.pruning.pruner import build_pruner
from agfprune.core.pruning.groups import channel_cost, output_positions, pruner_groups
from agfprune.core.scoring import score_model


def _resnet20():
    torch.manual_seed(0)
    loaded = load_model("cifar_resnet20")
    loaded.fingerprint = "test"
    return loaded


def _random_named_scores(loaded, seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct random scores per group, spread over several orders of magnitude across groups."""
    report = score_model(loaded.model, get_metric("magnitude-l2"), torch.randn(1, 3, 32, 32))
    generator = torch.Generator().manual_seed(seed)
    return {group.key: torch.rand(group.channels, generator=generator) * 10 ** (3 * torch.rand(1, generator=generator))
            for group in report.metrics["magnitude-l2"].groups}


def _kept_by_key(record, loaded, named) -> dict[str, tuple[list[int], torch.Tensor]]:
    from agfprune.core.pruning.groups import group_key

    pruner, _ = build_pruner(copy.deepcopy(loaded.model), torch.randn(1, 3, 32, 32), PruneOptions(ratio=0.5), 0.5)
    out = {}
    for info, group in pruner_groups(pruner):
        out[group_key(group)] = (record.groups[info.name]["kept"], named[group_key(group)])
    return out


def test_per_group_pruning_keeps_each_groups_highest_scores():
    loaded = _resnet20()
    named = _random_named_scores(loaded)
    result = prune_model(loaded, StoredScorer("file", named, "test"), PruneOptions(ratio=0.5))
    for key, (kept, scores) in _kept_by_key(result.record, loaded, named).items():
        expected = sorted(torch.argsort(scores, descending=True)[:len(kept)].tolist())
        assert kept == expected, key
        assert len(kept) == scores.numel() - (scores.numel() - int(scores.numel() * 0.5))


def test_global_pruning_keeps_the_highest_raw_scores_across_groups():
    loaded = _resnet20()
    named = _random_named_scores(loaded, seed=1)
    result = prune_model(loaded, StoredScorer("file", named, "test"),
                         PruneOptions(ratio=0.5, global_pruning=True, max_layer_ratio=1.0))
    groups = _kept_by_key(result.record, loaded, named)
    removed_scores = torch.cat([scores[sorted(set(range(scores.numel())) - set(kept))]
                                for kept, scores in groups.values()])
    highest_removed = float(removed_scores.max())
    uneven = set()
    for key, (kept, scores) in groups.items():
        # lowest first across all groups: a kept channel outranks every removed one, unless its
        # group is down to the one channel it must keep
        if len(kept) > 1:
            assert float(scores[kept].min()) >= highest_removed, key
        uneven.add(round(len(kept) / scores.numel(), 2))
    total = sum(scores.numel() for _, scores in groups.values())
    assert removed_scores.numel() == total - int(total * 0.5)
    assert len(uneven) > 2  # raw scores of different scales: layers lose very different fractions


def test_unit_cost_equals_the_parameters_pruning_one_channel_frees():
    loaded = _resnet20()
    model = copy.deepcopy(loaded.model)
    example = torch.randn(1, 3, 32, 32)
    pruner, _ = build_pruner(model, example, PruneOptions(ratio=0.5), 0.5)
    positions = output_positions(model, example)
    checked = 0
    for info, group in pruner_groups(pruner):
        if info.name not in ("layer1.0.conv1", "layer2.1.conv1", "conv1"):
            continue
        trial = copy.deepcopy(model)
        graph = tp.DependencyGraph().build_dependency(trial, example_inputs=example)
        root = trial.get_submodule(info.name)
        before = sum(p.numel() for p in trial.parameters())
        graph.get_pruning_group(root, tp.prune_conv_out_channels, [0]).prune()
        freed = before - sum(p.numel() for p in trial.parameters())
        assert channel_cost(group, "params", positions) == pytest.approx(freed), info.name
        checked += 1
    assert checked == 3


def test_cost_aware_ranking_prefers_removing_expensive_low_utility_channels():
    loaded = _resnet20()
    utilities = {key: torch.ones_like(scores) for key, scores in _random_named_scores(loaded).items()}
    # the stage-3 residual stream is twice as useful per channel, but each of its channels holds a row
    # and a column of every stage-3 block: about ten times the parameters of a block-internal channel
    utilities["layer3.0.shortcut:out"] *= 2.0
    options = dict(ratio=0.5, target="params", global_pruning=True)
    plain = prune_model(loaded, StoredScorer("file", utilities, "test"), PruneOptions(**options))
    aware = prune_model(loaded, StoredScorer("file", utilities, "test"), PruneOptions(**options, cost_aware=True))

    def fraction(result, name):
        group = result.record.groups[name]
        return 1 - len(group["kept"]) / group["channels"]

    assert fraction(plain, "layer3.0.shortcut") == 0.0  # ranked by utility alone it is kept whole
    assert fraction(aware, "layer3.0.shortcut") > 0.3   # per parameter freed it is the cheapest to lose
    assert all(fraction(aware, name) < fraction(aware, "layer3.0.shortcut")
               for name in aware.record.groups if name.endswith(".conv1"))  # cheap block-internal channels
    assert aware.record.cost_aware and not plain.record.cost_aware


@pytest.mark.parametrize("options, message", [
    (dict(ratio=0.5, normalizer="zscore"), "normalizer"),
    (dict(ratio=0.5, cost_aware=True, global_pruning=True), "--cost-aware"),
    (dict(ratio=0.5, target="params", cost_aware=True), "--global"),
])
def test_bad_allocation_options_are_refused_before_work(options, message):
    with pytest.raises(UsageError, match=message):
        PruneOptions(**options).validate()


def test_global_ratio_beyond_the_layer_caps_is_refused():
    loaded = _resnet20()
    with pytest.raises(UsageError, match="at most"):
        prune_model(loaded, StoredScorer("file", _random_named_scores(loaded), "test"),
                    PruneOptions(ratio=0.95, global_pruning=True))
