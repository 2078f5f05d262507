"""`agfprune calibrate` and `agfprune score` end to end, including every bad input the issue names."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import JPEG_TRAIN, RESNET20_JPEG, assert_one_line_error, needs_shared, random_checkpoint

CALIB = ("--model", "cifar_resnet20", "--data", "synthetic:64", "--calib-batches", "1", "--calib-batch-size", "8",
         "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    """One calibration shared by the module's tests (calibrating is the slow part)."""
    from agfprune.cli.app import run

    path = tmp_path_factory.mktemp("calib") / "calib.safetensors"
    assert run(["calibrate", *CALIB, "--out", str(path), "--json"]) == 0
    return path


def test_calibrate_reports_what_it_collected(cli, tmp_path):
    result = cli("calibrate", *CALIB, "--out", tmp_path / "c.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["batches"] == 1 and summary["samples"] == 8 and summary["removal_sites"] == 19
    # ResNet-20: 9 block-internal norm outputs + 10 stream writes (stem + 3 per stage; never a shortcut)
    assert summary["parameters_with_gradients"] == 59  # 61 parameters minus 2 frozen option-A shortcuts


def test_calibrate_then_score_all_from_the_calibration_alone(cli, calib_file, tmp_path):
    out = tmp_path / "scores.json"
    result = cli("score", "--calib", calib_file, "--metrics", "all", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert list(summary["metrics"]) == ["agf", "taylor", "magnitude-l1", "magnitude-l2", "bn-scale", "wanda",
                                        "ria", "snip", "random"]
    document = json.loads(out.read_text())
    assert document["calibration"]["batches"] == 1 and document["calibration"]["model"] == "cifar_resnet20"
    assert document["model"]["fingerprint"] == document["calibration"]["fingerprint"]
    for entry in document["metrics"].values():
        assert len(entry["groups"]) == 12
        assert all(len(g["scores"]) == g["channels"] for g in entry["groups"])
    again = tmp_path / "again.json"
    assert cli("score", "--calib", calib_file, "--metrics", "all", "--out", again, "--quiet").exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_score_prints_a_table_by_default(cli, calib_file, tmp_path):
    result = cli("score", "--calib", calib_file, "--metrics", "agf,snip", "--out", tmp_path / "s.json")
    assert result.exit_code == 0, result.stderr
    assert "agf" in result.stdout and "snip" in result.stdout and "groups" in result.stdout


def test_magnitude_needs_no_calibration(cli, tmp_path):
    out = tmp_path / "mag.json"
    result = cli("score", "--model", "cifar_resnet20", "--metrics", "magnitude-l1", "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["calibration"] is None


def test_unknown_metric_lists_valid_ones(cli, calib_file, tmp_path):
    out = tmp_path / "scores.json"
    result = cli("score", "--calib", calib_file, "--metrics", "agff", "--out", out)
    assert_one_line_error(result, 2)
    assert "agff" in result.stderr and "taylor" in result.stderr and "magnitude-l1" in result.stderr
    assert not out.exists()


def test_agf_without_calibration_is_refused(cli, tmp_path):
    out = tmp_path / "scores.json"
    result = cli("score", "--model", "cifar_resnet20", "--metrics", "agf", "--out", out)
    assert_one_line_error(result, 2)
    assert "--calib" in result.stderr and not out.exists()


def test_calibration_of_other_weights_is_refused(cli, calib_file, tmp_path):
    out = tmp_path / "scores.json"
    other = random_checkpoint(tmp_path / "other.safetensors", seed=1)
    result = cli("score", "--calib", calib_file, "--checkpoint", other, "--out", out)
    assert_one_line_error(result, 4)
    assert "fingerprint" in result.stderr and not out.exists()


def test_zero_batches_is_refused(cli, tmp_path):
    out = tmp_path / "calib.safetensors"
    result = cli("calibrate", *[a if a != "1" else "0" for a in CALIB], "--out", out)
    assert_one_line_error(result, 2)
    assert "--calib-batches 0" in result.stderr and not out.exists()


def test_nan_loss_is_a_numerical_error(cli, tmp_path):
    out = tmp_path / "calib.safetensors"
    bad = random_checkpoint(tmp_path / "nan.safetensors", seed=1, poison=True)
    result = cli("calibrate", "--checkpoint", bad, "--data", "synthetic:16", "--calib-batches", "1", "--calib-batch-size", "8",
                 "--device", "cpu", "--quiet", "--out", out)
    assert_one_line_error(result, 5)
    assert "batch 1/1" in result.stderr and not out.exists()
    assert not list(tmp_path.glob(".calib*"))  # no temporary left behind


def test_bad_target_and_not_a_calibration_file(cli, tmp_path):
    result = cli("calibrate", *CALIB, "--calib-loss", "soft", "--out", tmp_path / "c.safetensors")
    assert_one_line_error(result, 2)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"nope")
    result = cli("score", "--calib", bogus, "--out", tmp_path / "s.json")
    assert_one_line_error(result, 4)


@pytest.mark.shared
@needs_shared(RESNET20_JPEG, JPEG_TRAIN)
def test_real_resnet20_calibration_ranks_differ_between_metrics(cli, tmp_path):
    calib = tmp_path / "calib.safetensors"
    result = cli("calibrate", "--checkpoint", RESNET20_JPEG, "--data", JPEG_TRAIN.parent, "--calib-batches", "2",
                 "--calib-batch-size", "16", "--device", "cpu", "--quiet", "--out", calib)
    assert result.exit_code == 0, result.stderr
    result = cli("score", "--calib", calib, "--metrics", "agf,magnitude-l1,random", "--json")
    summary = json.loads(result.stdout)["metrics"]
    assert summary["agf"]["spearman_vs_agf"] == pytest.approx(1.0)
    assert summary["magnitude-l1"]["spearman_vs_agf"] < 0.95
    assert abs(summary["random"]["spearman_vs_agf"]) < 0.3
