"""`agfprune finetune` and `agfprune export` from the command line: results and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_one_line_error
from tests.core.pruned_models import pruned_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return pruned_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", ratio=0.75, input_px=8)


def _finetune_args(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", str(checkpoint), "--data", "synthetic:48", "--eval-data", "synthetic:16", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--out", str(out), "--quiet", *extra]


def test_finetune_json_then_export_the_result(cli, tiny, tmp_path):
    out = tmp_path / "ft.safetensors"
    result = cli(*_finetune_args(tiny, out, "--json", "--optimizer", "adamw", "--label-smoothing", "0.1"))
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["outputs"]["last"] == str(tmp_path / "ft.last.safetensors")
    assert document["initial"]["val_samples"] == 16 and len(document["epochs"]) == 1
    # the reported validation numbers are what `eval` (checked against known answers) gives for the
    # weights written as "last" on the same images
    evaluated = cli("eval", document["outputs"]["last"], "--data", "synthetic:16", "--device", "cpu",
                    "--latency-repeats", "0", "--json", "--quiet")
    assert evaluated.exit_code == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["samples"] == document["final"]["val_samples"] == 16
    assert report["top1"] == pytest.approx(document["final"]["val_top1"], abs=1e-3)
    assert report["loss"] == pytest.approx(document["final"]["val_loss"], rel=1e-4)
    exported = cli("export", str(out), "--format", "torchscript", "--out", str(tmp_path / "ft.pt"), "--json")
    assert exported.exit_code == 0, exported.stderr
    report = json.loads(exported.stdout)
    assert report["max_abs_diff"] <= 1e-4 and report["format"] == "torchscript"
    human = cli("export", str(out), "--format", "safetensors", "--out", str(tmp_path / "copy.safetensors"))
    assert human.exit_code == 0 and "max abs diff" in human.stdout


def test_finetune_bad_inputs_are_one_line_errors(cli, tiny, tmp_path):
    out = tmp_path / "run" / "ft.safetensors"
    missing_val = cli(*_finetune_args(tiny, out, "--eval-data", str(tmp_path / "nope")))
    assert_one_line_error(missing_val, 3)
    assert "data not found" in missing_val.stderr
    teacher = pruned_checkpoint(tmp_path / "t100.safetensors", ratio=0.0, input_px=8, num_classes=100)
    wrong_teacher = cli(*_finetune_args(tiny, out, "--teacher", str(teacher)))
    assert_one_line_error(wrong_teacher, 4)
    assert "100 classes" in wrong_teacher.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = cli(*_finetune_args(tiny, blocker / "ft.safetensors"))
    assert_one_line_error(unwritable, 6)
    assert not out.parent.exists() or not any(out.parent.iterdir())

    first = cli(*_finetune_args(tiny, out, "--no-eval-initial"))
    assert first.exit_code == 0, first.stderr
    snapshot = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    other_run = cli(*_finetune_args(tiny, out, "--no-eval-initial", "--resume", "--seed", "5"))
    assert_one_line_error(other_run, 4)
    assert "another run" in other_run.stderr and "seed 0 vs 5" in other_run.stderr
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == snapshot
    no_state = cli(*_finetune_args(tiny, tmp_path / "fresh" / "ft.safetensors", "--resume"))
    assert_one_line_error(no_state, 2)


def test_export_bad_inputs(cli, tiny, tmp_path):
    bad_format = cli("export", str(tiny), "--format", "tflite", "--out", str(tmp_path / "m.tflite"))
    assert_one_line_error(bad_format, 2)
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = cli("export", str(tiny), "--format", "torchscript", "--out", str(blocker / "m.pt"))
    assert_one_line_error(unwritable, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
