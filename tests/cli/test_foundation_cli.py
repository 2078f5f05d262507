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


def test_groups_without_a_command_print_their_help(cli) -> None:
    for args in ((), ("route",)):
        result = cli(*args)
        assert result.exit_code == 0 and "Usage: agfprune" in result.stdout and not result.stderr, result


def test_no_private_typer_imports() -> None:
    """Typer's vendored click (`typer._click`) is private; the CLI uses Typer's public names only."""
    package = Path(__file__).resolve().parents[2] / "agfprune"
    offenders = [str(path) for path in package.rglob("*.py") if "typer._" in path.read_text()]
    assert offenders == []


def test_info_on_a_cifar_resnet_imports_neither_timm_nor_torchvision(tmp_path: Path) -> None:
    """Start-up: `info` on agfprune's own models loads torch only (timm + torchvision cost ~1.5 s more)."""
    checkpoint = tmp_path / "m.safetensors"
    write_checkpoint(checkpoint, create_model("cifar_resnet20"), arch="cifar_resnet20", timm_kwargs={},
                     data_config={})
    code = ("import contextlib, io, json, sys; from agfprune.cli.app import run\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    assert run(['info', {str(checkpoint)!r}, '--json']) == 0\n"
            "print(json.dumps([json.loads(out.getvalue())['macs'], sorted(m for m in ('timm', 'torchvision') if m in sys.modules)]))")
    macs, heavy = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True).stdout)
    assert heavy == []
    import torch_pruning as tp

    reference, _ = tp.utils.count_ops_and_params(create_model("cifar_resnet20"), torch.zeros(1, 3, 32, 32))
    assert macs == reference


def test_help_and_version(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0 and "eval" in result.stdout and "info" in result.stdout
    assert cli("--version").stdout.startswith("agfprune ")


def test_eval_json_reports_known_accuracy_and_loss(cli, tiny_npz: Path, tmp_path: Path) -> None:
    """A classifier with zero weights and fixed biases predicts the same ranking for every image, so
    top-1, top-5 and the loss follow from the label counts alone (computed here with NumPy)."""
    import numpy as np

    labels = np.load(tiny_npz)["labels"]
    counts = np.bincount(labels, minlength=10)
    ranking = np.argsort(-counts, kind="stable")[[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]]  # 2nd most common first
    bias = np.zeros(10)
    bias[ranking] = np.linspace(2.0, -2.0, 10)
    model = create_model("cifar_resnet20")
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.copy_(torch.from_numpy(bias))
    write_checkpoint(tmp_path / "m.safetensors", model, arch="cifar_resnet20", timm_kwargs={}, data_config={})
    result = cli("eval", tmp_path / "m.safetensors", "--data", tiny_npz, "--json", "--quiet",
                 "--latency-repeats", "1", "--batch-size", "16")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    log_probs = bias - np.log(np.exp(bias).sum())
    assert report["samples"] == 64
    assert report["top1"] == pytest.approx(100.0 * counts[ranking[0]] / 64, abs=1e-3)
    assert report["top5"] == pytest.approx(100.0 * counts[ranking[:5]].sum() / 64, abs=1e-3)
    assert report["loss"] == pytest.approx(-log_probs[labels].mean(), abs=1e-5)
    assert report["params"] == sum(p.numel() for p in model.parameters())
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
