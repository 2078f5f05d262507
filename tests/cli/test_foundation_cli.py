"""eval/info/--help/--config through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agfprune.core.checkpoint import write_checkpoint
from agfprune.core.models import create_model
from tests.conftest import JPEG_VAL, RESNET20_JPEG, RESNET56_JPEG, RESNET56_TH, assert_one_line_error, needs_shared


def test_help_lists_commands_without_importing_torch() -> None:
    code = ("import sys; from agfprune.cli.app import app; "
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_and_version(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0 and "eval" in result.stdout and "info" in result.stdout
    assert cli("--version").stdout.startswith("agfprune ")


def test_eval_json_on_synthetic_model(cli, tiny_npz: Path, tmp_path: Path) -> None:
    model = create_model("cifar_resnet20")
    write_checkpoint(tmp_path / "m.safetensors", model, arch="cifar_resnet20", timm_kwargs={}, data_config={})
    result = cli("eval", tmp_path / "m.safetensors", "--data", tiny_npz, "--json", "--quiet",
                 "--latency-repeats", "1", "--batch-size", "16")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 64
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert 0 <= report["top1"] <= report["top5"] <= 100
    assert report["latency_ms"] > 0


def test_info_json(cli) -> None:
    result = cli("info", "--model", "cifar_resnet20", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["macs"] > 40_000_000
    assert any(layer["name"] == "layer1.0.conv1" for layer in summary["prunable_layers"])
    assert summary["data_config"]["input_size"] == [3, 32, 32]


def test_config_file_sets_defaults(cli, tiny_npz: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"model: cifar_resnet20\neval:\n  data: {tiny_npz}\n  limit: 20\n  latency_repeats: 0\n")
    result = cli("eval", "--config", config, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 20
    config.write_text("eval:\n  no_such_option: 1\n")
    assert_one_line_error(cli("eval", "--config", config), 2)


@pytest.mark.parametrize("args,code", [
    (["eval", "--model", "resnet1800", "--data", "synthetic:10"], 4),
    (["eval", "--model", "cifar_resnet20", "--data", "/no/such/folder"], 3),
    (["eval", "--model", "cifar_resnet20", "--checkpoint", "/no/such.safetensors", "--data", "synthetic:8"], 4),
    (["eval", "--model", "cifar_resnet20", "--data", "synthetic:8", "--device", "cuda:7"], 2),
    (["eval", "--model", "cifar_resnet20", "--data", "synthetic:8", "--batch-size", "0"], 2),
    (["eval", "--model", "cifar_resnet20", "--data", "synthetic:8", "--mean", "a,b"], 2),
    (["eval", "--bogus-flag"], 2),
    (["info"], 2),
])
def test_bad_input_gives_one_line_error(cli, args: list[str], code: int) -> None:
    assert_one_line_error(cli(*args), code)


def test_empty_folder_and_corrupt_checkpoint(cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("eval", "--model", "cifar_resnet20", "--data", tmp_path / "empty"), 3)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    assert_one_line_error(cli("eval", corrupt, "--data", "synthetic:8"), 4)
    corrupt_th = tmp_path / "corrupt.th"
    corrupt_th.write_bytes(b"garbage")
    assert_one_line_error(cli("eval", "--model", "cifar_resnet20", "--checkpoint", corrupt_th, "--data", "synthetic:8"), 4)


def test_labels_beyond_the_classifier_are_refused(cli, tmp_path: Path) -> None:
    import numpy as np

    np.savez(tmp_path / "many.npz", images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.array([0, 1, 2, 50]))
    assert_one_line_error(cli("eval", "--model", "cifar_resnet20", "--data", tmp_path / "many.npz"), 3)


@pytest.mark.shared
@needs_shared(RESNET56_JPEG)
def test_checkpoint_for_another_architecture(cli) -> None:
    result = cli("eval", "--model", "resnet18", "--checkpoint", RESNET56_JPEG, "--data", "synthetic:8")
    assert_one_line_error(result, 4)
    assert "made for model cifar_resnet56" in result.stderr


@pytest.mark.shared
@needs_shared(RESNET56_TH, RESNET20_JPEG, JPEG_VAL)
def test_real_checkpoints_reach_published_accuracy(cli) -> None:
    """1,000 seeded JPEG val images: the public .th ResNet-56 and the JPEG-tuned ResNet-20."""
    result = cli("eval", "--model", "cifar_resnet56", "--checkpoint", RESNET56_TH, "--data", JPEG_VAL,
                 "--limit", "1000", "--json", "--quiet", "--latency-repeats", "0")
    assert result.exit_code == 0, result.stderr
    assert 78.0 < json.loads(result.stdout)["top1"] < 89.0  # 83.3 on all 5,000
    result = cli("eval", RESNET20_JPEG, "--data", JPEG_VAL, "--limit", "1000", "--json", "--quiet",
                 "--latency-repeats", "0")
    assert 84.0 < json.loads(result.stdout)["top1"] < 92.5  # 88.1 on all 5,000
