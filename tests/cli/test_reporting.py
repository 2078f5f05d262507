"""Saying what happened: width tables and plots of pruned models, round-to reporting, latency spread
and speed-ups worded right, ETA formatting, readable piped tables, a fast --pretrained failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agfprune.core.evaluate import speed_wording
from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    from agfprune.cli.app import run

    out = tmp_path_factory.mktemp("pruned") / "r20.safetensors"
    assert run(["prune", "--model", "cifar_resnet20", "--ratio", "0.5", "--out", str(out), "--device", "cpu",
                "--quiet", "--json"]) == 0
    return out


def test_info_shows_widths_before_and_after_and_plots_them(cli, pruned: Path, tmp_path: Path) -> None:
    import agfprune

    plot = tmp_path / "widths.png"
    result = cli("info", pruned, "--json", "--plot", plot)
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    rows = {row["layer"]: row for row in document["widths"]}
    model = agfprune.load(pruned)
    # independent: the dense CIFAR ResNet-20 has 16/32/64-channel stages; the pruned model's own layers
    assert rows["conv1"]["before"] == 16 and rows["layer2.0.conv1"]["before"] == 32
    assert rows["layer3.2.conv2"]["before"] == 64 and rows["linear"]["before"] == 10
    for name, row in rows.items():
        module = model.get_submodule(name)
        assert row["after"] == getattr(module, "out_channels", getattr(module, "out_features", None))
    assert rows["layer1.0.conv1"]["after"] == 8 and rows["linear"]["after"] == 10
    assert document["width_summary"]["layers_narrower"] == sum(r["after"] < r["before"] for r in rows.values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = cli("info", pruned)
    assert "layer1.0.conv1" in table.stdout and "before" in table.stdout


def test_info_plot_refused_for_a_dense_model(cli, tmp_path: Path) -> None:
    result = cli("info", "--model", "cifar_resnet20", "--plot", tmp_path / "w.png")
    assert_one_line_error(result, 2)
    assert "not pruned" in result.stderr and not (tmp_path / "w.png").exists()


def test_vit_heads_in_width_table(tmp_path: Path) -> None:
    import timm
    import torch

    import agfprune
    from agfprune.core.widths_report import width_rows

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval()
    pruned_vit, _ = agfprune.prune(vit, torch.randn(1, 3, 32, 32), ratio=0.25, head_ratio=0.5)
    heads = [row for row in width_rows(vit, pruned_vit) if row["kind"] == "heads"]
    assert len(heads) == 12 and all(row["before"] == 3 and row["after"] == 1 for row in heads)


def test_prune_reports_round_to(cli, tmp_path: Path) -> None:
    result = cli("prune", "--model", "cifar_resnet20", "--ratio", "0.5", "--round-to", "16", "--device", "cpu",
                 "--out", tmp_path / "a.safetensors", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    # 16-channel groups cannot lose a multiple of 16 and keep one: only the 32/64-wide groups shrink
    assert 0.0 < summary["achieved_channel_ratio"] < 0.49
    assert any("--round-to 16 moved the channel ratio from 0.5" in note for note in summary["notes"])
    assert "layers narrower" in summary["widths"]


def test_speed_is_never_a_factor_below_one_called_faster() -> None:
    assert speed_wording(2.5) == "2.50× faster"
    assert speed_wording(0.16) == "6.25× slower"


def test_eta_formatting() -> None:
    from agfprune.core.compare import format_duration

    assert format_duration(42) == "42 s"
    assert format_duration(600) == "10 min"
    assert format_duration(3 * 3600 + 5 * 60) == "3 h 05 min"


def test_piped_tables_keep_whole_names(cli, tmp_path: Path) -> None:
    result = cli("score", "--model", "cifar_resnet20", "--metrics", "magnitude-l1,magnitude-l2,bn-scale",
                 "--out", tmp_path / "s.json")
    assert result.exit_code == 0, result.stderr
    assert "magnitude-l1" in result.stdout and "magnitude-l2" in result.stdout and "…" not in result.stdout


def test_pretrained_without_network_fails_in_one_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import agfprune.core.models.factory as factory

    def unreachable(*_a, **_k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(factory, "_weights_cached", lambda hub_id: False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    result = cli("info", "--model", "resnet18", "--pretrained")
    assert_one_line_error(result, 4)
    assert "cannot reach huggingface.co" in result.stderr and "--checkpoint" in result.stderr


def test_finetune_best_only_above_the_initial_evaluation(cli, tmp_path: Path) -> None:
    import torch

    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.models import create_model

    torch.manual_seed(0)
    # no BatchNorm and a vanishing learning rate: the epoch's accuracy equals the initial one exactly
    kwargs = dict(img_size=32, patch_size=8, num_classes=10, depth=2)
    checkpoint = tmp_path / "vit.safetensors"
    write_checkpoint(checkpoint, create_model("vit_tiny_patch16_224", **kwargs), arch="vit_tiny_patch16_224",
                     timm_kwargs=kwargs, data_config={"input_size": [3, 32, 32]})
    result = cli("finetune", checkpoint, "--data", "synthetic:32", "--eval-data", "synthetic:16", "--epochs", "1",
                 "--lr", "1e-30", "--weight-decay", "0", "--batch-size", "16", "--device", "cpu",
                 "--out", tmp_path / "ft.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    epoch = document["epochs"][0]
    assert epoch["val_top1"] == document["initial"]["val_top1"]
    assert epoch["best"] and not epoch["improved"]
    assert "(best)" not in result.stderr


class _ScriptedClock:
    """A perf_counter whose timed spans last the scripted milliseconds, in call order (start, end,
    start, end, ...): the latency numbers then follow from the script, not from the machine."""

    def __init__(self, spans_ms: list[float]) -> None:
        self.spans, self.now, self.calls = list(spans_ms), 0.0, 0

    def perf_counter(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the end of a timed span
            self.now += self.spans.pop(0) / 1000.0
        return self.now


def test_eval_reports_latency_per_batch_and_image_with_the_spread(cli, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import agfprune.core.evaluate as evaluate
    from tests.conftest import random_checkpoint

    pruned = random_checkpoint(tmp_path / "a.safetensors", seed=0, input_size=(3, 16, 16))
    dense = random_checkpoint(tmp_path / "b.safetensors", seed=1, input_size=(3, 16, 16))
    # rounds interleave pruned, dense: 3 warm-up rounds, then pruned 10/30/20 ms, dense 40/60/50 ms
    clock = _ScriptedClock([999, 999] * 3 + [10, 40, 30, 60, 20, 50])
    monkeypatch.setattr(evaluate, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    result = cli("eval", pruned, "--compare-to", dense, "--data", "synthetic:8", "--batch-size", "4",
                 "--latency-repeats", "3", "--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    reference = report["compare_to"]
    assert (report["latency_ms"], report["latency_ms_min"], report["latency_ms_max"]) == (20, 10, 30)
    assert (reference["latency_ms"], reference["latency_ms_min"], reference["latency_ms_max"]) == (50, 40, 60)
    assert report["latency_ms_per_image"] == 5 and reference["latency_ms_per_image"] == 12.5
    assert report["latency_repeats"] == reference["latency_repeats"] == 3
    assert report["speedup"] == 2.5
    assert "2.50× faster" in report["summary"] and "5.000 vs 12.500 ms/image" in report["summary"]
    clock = _ScriptedClock([999, 999] * 3 + [40, 10, 60, 30, 50, 20])
    monkeypatch.setattr(evaluate, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    table = cli("eval", pruned, "--compare-to", dense, "--data", "synthetic:8", "--batch-size", "4",
                "--latency-repeats", "3", "--device", "cpu", "--quiet")
    assert table.exit_code == 0, table.stderr
    assert "50.00 ms/batch of 4 (min 40.00, max 60.00 over 3 repeats), 12.500 ms/image" in table.stdout
    assert "2.50× slower" in table.stdout and "faster" not in table.stdout


def test_eval_without_timing_says_so(cli, tmp_path: Path) -> None:
    from tests.conftest import random_checkpoint

    checkpoint = random_checkpoint(tmp_path / "a.safetensors", seed=0, input_size=(3, 16, 16))
    result = cli("eval", checkpoint, "--data", "synthetic:8", "--latency-repeats", "0", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "not timed (--latency-repeats 0)" in result.stdout
    document = json.loads(cli("eval", checkpoint, "--data", "synthetic:8", "--latency-repeats", "0",
                              "--device", "cpu", "--quiet", "--json").stdout)
    assert all(document[key] is None for key in ("latency_ms", "latency_ms_per_image", "latency_ms_min",
                                                 "latency_ms_max", "latency_repeats"))
