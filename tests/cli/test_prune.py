"""`agfprune prune` end to end: the checkpoint it writes reloads without --model, and every bad
input the issue names fails with one line, a non-zero exit and no output file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import (JPEG_TRAIN, JPEG_VAL, RESNET56_JPEG, assert_one_line_error, needs_shared,
                            random_checkpoint)

SYNTH = ("--data", "synthetic:64", "--calib-batches", "1", "--calib-batch-size", "8", "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("dense") / "dense.safetensors", seed=1)


def test_prune_writes_a_checkpoint_that_eval_and_info_rebuild(cli, dense: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.safetensors"
    result = cli("prune", "--checkpoint", dense, "--metric", "agf", *SYNTH, "--ratio", "0.5", "--out", out,
                 "--eval-data", "synthetic:32", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["metric"] == "agf" and summary["ratio"] == 0.5
    assert summary["params_after"] < summary["params_before"]
    assert summary["macs_after"] < summary["macs_before"]
    assert summary["bn_recalibration_batches"] == 1
    assert summary["eval_samples"] == 32
    assert summary["calibration"]["data"] == "synthetic:64"
    import agfprune

    model = agfprune.load(str(out))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # the reported sizes are those of the network in the file, counted here
    params = sum(p.numel() for p in model.parameters())
    assert summary["params_after"] == params
    assert summary["params_before"] == sum(p.numel() for p in agfprune.load(str(dense)).parameters())
    info = cli("info", out, "--json")
    assert info.exit_code == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["pruned"] is True and described["params"] == params
    assert described["metadata"]["pruning"]["groups"]["conv1"]["channels"] == 16
    # prune's --eval-data accuracy is what `eval` (checked against known answers) reports for the file
    evaluated = cli("eval", out, "--data", "synthetic:32", "--device", "cpu", "--latency-repeats", "0",
                    "--json", "--quiet")
    assert evaluated.exit_code == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["params"] == params and report["samples"] == summary["eval_samples"]
    assert report["top1"] == pytest.approx(summary["top1"], abs=1e-3)
    assert report["loss"] == pytest.approx(summary["loss"], rel=1e-4)


def test_prune_with_a_scores_file_and_refusal_of_another_models_scores(cli, dense: Path, tmp_path: Path) -> None:
    own, other = tmp_path / "own.json", tmp_path / "other.json"
    other_checkpoint = random_checkpoint(tmp_path / "r32.safetensors", seed=1, arch="cifar_resnet32")
    for checkpoint, path in ((dense, own), (other_checkpoint, other)):
        scored = cli("score", "--checkpoint", checkpoint, "--metrics", "magnitude-l2", "--out", path, "--json")
        assert scored.exit_code == 0, scored.stderr
    out = tmp_path / "pruned.safetensors"
    result = cli("prune", "--checkpoint", dense, "--scores", own, "--ratio", "0.5", "--out", out, "--json",
                 "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["metric"] == "magnitude-l2"
    refused = cli("prune", "--checkpoint", dense, "--scores", other, "--ratio", "0.5",
                  "--out", tmp_path / "no.safetensors")
    assert_one_line_error(refused, 4)
    assert not (tmp_path / "no.safetensors").exists()


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_ratio_outside_zero_one_is_refused(cli, dense: Path, tmp_path: Path, ratio: str) -> None:
    out = tmp_path / "p.safetensors"
    result = cli("prune", "--checkpoint", dense, "--metric", "magnitude-l2", "--ratio", ratio, "--out", out)
    assert_one_line_error(result, 2)
    assert "--ratio" in result.stderr and not out.exists()


def test_unreachable_target_is_refused(cli, dense: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.safetensors"
    result = cli("prune", "--checkpoint", dense, "--metric", "magnitude-l2", "--ratio", "0.9", "--target", "params",
                 "--ignore", "layer3.*", "--out", out, "--device", "cpu", "--quiet")
    assert_one_line_error(result, 2)
    assert "unreachable" in result.stderr and not out.exists()


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_checkpoint_is_refused(cli, dense: Path, tmp_path: Path, damage: str) -> None:
    data = bytearray(dense.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-100] ^= 0xFF  # a weight byte: the recorded fingerprint no longer matches
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bytes(data))
    out = tmp_path / "p.safetensors"
    result = cli("prune", "--checkpoint", broken, "--metric", "magnitude-l2", "--ratio", "0.5", "--out", out)
    assert_one_line_error(result, 4)
    assert not out.exists() and not list(tmp_path.glob(".p.safetensors*"))


@pytest.mark.parametrize("args,needle", [
    (("--metric", "agf"), "--data"),
    (("--calib-loss", "soft"), "--calib-loss"),
    (("--metric", "nope"), "valid metrics"),
    (("--metric", "magnitude-l2", "--steps", "0"), "--steps"),
    (("--metric", "magnitude-l2", "--global", "--max-layer-ratio", "1.5"), "--max-layer-ratio"),
])
def test_bad_options_are_usage_errors(cli, dense: Path, tmp_path: Path, args, needle: str) -> None:
    out = tmp_path / "p.safetensors"
    result = cli("prune", "--checkpoint", dense, "--ratio", "0.5", "--out", out, *args)
    assert_one_line_error(result, 2)
    assert needle in result.stderr and not out.exists()


def test_out_must_be_safetensors(cli, dense: Path, tmp_path: Path) -> None:
    result = cli("prune", "--checkpoint", dense, "--metric", "magnitude-l2", "--ratio", "0.5",
                 "--out", tmp_path / "p.pth")
    assert_one_line_error(result, 2)


def test_help_explains_ratio_semantics(cli) -> None:
    result = cli("prune", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    for phrase in ("fraction of channels", "--target", "params or macs", "--global", "--prune-heads", "--steps"):
        assert phrase in text


@pytest.mark.shared
@pytest.mark.slow
@needs_shared(RESNET56_JPEG, JPEG_TRAIN, JPEG_VAL)
def test_real_resnet56_prunes_and_reports_accuracy(cli, tmp_path: Path) -> None:
    out = tmp_path / "r56.safetensors"
    result = cli("prune", "--checkpoint", RESNET56_JPEG, "--metric", "magnitude-l2", "--data", JPEG_TRAIN.parent,
                 "--limit", "128", "--calib-batch-size", "64", "--bn-batches", "2", "--ratio", "0.5",
                 "--eval-data", JPEG_VAL.parent, "--eval-limit", "128", "--out", out, "--device", "cpu",
                 "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["params_before"] == 855578 and summary["params_after"] < 250000
    assert summary["bn_recalibration_batches"] == 2 and summary["eval_samples"] == 128
