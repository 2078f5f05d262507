"""Scoring: groups as the pruner forms them, deterministic scores.json, reading scores back."""

from __future__ import annotations

import json

import pytest
import torch

from agfprune.core.calibration import collect_statistics
from agfprune.core.errors import ModelError, UsageError
from agfprune.core.metrics import get_metric
from agfprune.core.models import create_model
from agfprune.core.scores_file import load_scores, write_scores
from agfprune.core.scoring import build_graph, group_key, iter_groups, rank_agreement, score_model


def _resnet():
    torch.manual_seed(0)
    return create_model("cifar_resnet20")


def test_groups_couple_residual_channels_and_skip_the_classifier():
    report = score_model(_resnet(), get_metric("magnitude-l1"), torch.zeros(1, 3, 32, 32))
    groups = report.metrics["magnitude-l1"].groups
    keys = [g.key for g in groups]
    assert len(keys) == len(set(keys)) == 12  # 9 block-internal + 3 residual streams
    assert not any(k.startswith("linear") for k in keys)
    stream = next(g for g in groups if g.key == "conv1:out")
    assert {"conv1:out", "bn1:out", "layer1.0.conv1:in", "layer1.2.bn2:out"} <= set(stream.layers)
    assert stream.channels == 16 and stream.scores.shape == (16,)
    assert any("shortcut:out" in layer for g in groups for layer in g.layers)
    summaries = report.metrics["magnitude-l1"].layer_summaries()
    assert {row["layer"] for row in summaries} >= {"conv1", "layer3.2.bn2", "layer2.0.shortcut"}


def test_same_seed_gives_byte_identical_json(tmp_path):
    texts = []
    for run in range(2):
        model = _resnet()
        batches = [(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)), torch.arange(4))]
        stats = collect_statistics(model, batches, "cpu", batches=1)
        metrics = [get_metric(n, stats, seed=3) for n in ("agf", "random")]
        path = tmp_path / f"scores{run}.json"
        write_scores(path, score_model(model, metrics, torch.zeros(1, 3, 32, 32)))
        texts.append(path.read_bytes())
    assert texts[0] == texts[1]
    document = json.loads(texts[0])
    assert document["format"] == "agfprune-scores" and document["version"] == 1
    assert set(document["metrics"]) == {"agf", "random"}
    group = document["metrics"]["agf"]["groups"][0]
    assert set(group) >= {"key", "layers", "channels", "scores", "heads"}


def test_load_scores_roundtrip_and_importance(tmp_path):
    model = _resnet()
    report = score_model(model, [get_metric("magnitude-l2"), get_metric("random", seed=1)], torch.zeros(1, 3, 32, 32))
    path = tmp_path / "scores.json"
    write_scores(path, report)
    loaded = load_scores(path, "magnitude-l2")
    assert loaded.fingerprint == report.model["fingerprint"]
    graph = build_graph(model, torch.zeros(1, 3, 32, 32))
    group = next(iter_groups(graph, [model.linear]))
    expected = report.metrics["magnitude-l2"].groups[0].scores
    assert group_key(group) == report.metrics["magnitude-l2"].groups[0].key
    assert torch.allclose(loaded.importance()(group), expected, rtol=1e-6)
    with pytest.raises(UsageError, match="name the one"):
        load_scores(path)
    with pytest.raises(UsageError, match="no scores for metric 'agf'"):
        load_scores(path, "agf")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ModelError, match="not an agfprune scores file"):
        load_scores(tmp_path / "other.json")


def test_vit_attention_groups_are_rooted_at_projection_inputs():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         num_classes=5)
    stats = collect_statistics(model, [(torch.randn(3, 3, 16, 16), torch.arange(3))], "cpu", batches=1)
    report = score_model(model, [get_metric("agf", stats), get_metric("bn-scale")], torch.zeros(1, 3, 16, 16))
    attention = next(g for g in report.metrics["agf"].groups if g.key == "blocks.0.attn.proj:in")
    assert attention.heads == 2 and attention.channels == 32
    assert "blocks.0.attn.qkv:out" in attention.layers
    assert attention.head_scores().shape == (2,)
    others = [g for g in report.metrics["agf"].groups if g.key != "blocks.0.attn.proj:in"]
    assert "blocks.0.mlp.fc1:out" in {g.key for g in others}
    assert all(g.heads is None for g in others)  # the residual stream only reads qkv: not a head group
    assert "blocks.0.attn.proj:in" in report.metrics["bn-scale"].skipped  # no norm layer in a head group


def test_rank_agreement_of_a_metric_with_itself_is_one():
    model = _resnet()
    report = score_model(model, [get_metric("magnitude-l1"), get_metric("random")], torch.zeros(1, 3, 32, 32))
    agreement = rank_agreement(report, "magnitude-l1")
    assert agreement["magnitude-l1"]["spearman"] == pytest.approx(1.0)
    assert abs(agreement["random"]["spearman"]) < 0.5
