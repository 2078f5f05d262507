"""Fine-tuning driver: outputs keep the pruned format, resume is exact, bad input fails early."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from agfprune.core.checkpoint import read_checkpoint
from agfprune.core.errors import DataError, ModelError, OutputError
from agfprune.core.finetune import FinetuneConfig, finetune, output_paths
from agfprune.core.models import load_model
from tests.conftest import signal_when, start_agfprune
from tests.core.pruned_models import pruned_checkpoint


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    """cifar_resnet20 with half its channels removed, at 16 px (fast)."""
    return pruned_checkpoint(tmp_path_factory.mktemp("pruned") / "pruned.safetensors", ratio=0.5, input_px=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """cifar_resnet20 with three quarters of its channels removed, at 8 px (very fast)."""
    return pruned_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", ratio=0.75, input_px=8)


def _config(pruned: Path, out: Path, **overrides) -> FinetuneConfig:
    settings = dict(checkpoint=pruned, data="synthetic:64", val="synthetic:32", out=out, epochs=2,
                    batch_size=16, lr=0.05, device="cpu", save_every=2)
    settings.update(overrides)
    return FinetuneConfig(**settings)


def test_finetune_keeps_pruned_format_and_logs(pruned, tmp_path):
    result = finetune(_config(pruned, tmp_path / "ft.safetensors", warmup_epochs=0.5, label_smoothing=0.1))
    outputs = result.outputs
    assert outputs.last == tmp_path / "ft.last.safetensors"
    for path in (outputs.best, outputs.last, outputs.state, outputs.log):
        assert path.exists(), path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    source = load_model(checkpoint=pruned)
    for path in (outputs.best, outputs.last):
        reloaded = load_model(checkpoint=path)  # no --model: metadata rebuilds the pruned net
        assert sum(p.numel() for p in reloaded.model.parameters()) == sum(p.numel() for p in source.model.parameters())
        metadata = reloaded.metadata
        assert metadata["structure"] == source.metadata["structure"] and metadata["structure"]
        assert metadata["pruning"] == {"ratio": 0.5, "method": "magnitude"}
        assert metadata["data_config"]["input_size"] == [3, 16, 16]
        assert metadata["finetune"]["source_fingerprint"] == source.fingerprint
    assert reloaded.fingerprint != source.fingerprint  # weights did change
    lines = [json.loads(line) for line in outputs.log.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert result.best_top1 == max(line["val_top1"] for line in lines[1:])
    best = read_checkpoint(outputs.best).metadata["finetune"]
    assert best["epoch"] == result.best_epoch and best["val_top1"] == pytest.approx(result.best_top1)


def test_output_naming():
    paths = output_paths(Path("runs/model.safetensors"))
    assert (paths.last.name, paths.state.name, paths.log.name) == (
        "model.last.safetensors", "model.state.pt", "model.log.jsonl")


def test_resume_refuses_state_of_another_run(pruned, tmp_path):
    out = tmp_path / "a.safetensors"
    finetune(_config(pruned, out, epochs=1, eval_initial=False))
    before = out.read_bytes()
    with pytest.raises(ModelError, match=r"another run.*lr 0\.05 vs 0\.01"):
        finetune(_config(pruned, out, epochs=1, lr=0.01, resume=True, eval_initial=False))
    assert out.read_bytes() == before


def test_bad_inputs_fail_before_writing(pruned, tmp_path):
    out = tmp_path / "x" / "ft.safetensors"
    with pytest.raises(DataError, match="data not found"):
        finetune(_config(pruned, out, val=str(tmp_path / "missing")))
    other = pruned_checkpoint(tmp_path / "teacher100.safetensors", ratio=0.25, input_px=16, num_classes=100)
    with pytest.raises(ModelError, match="100 classes"):
        finetune(_config(pruned, out, teacher=str(other)))
    assert not out.parent.exists() or not any(out.parent.iterdir())
    blocker = tmp_path / "a-file"  # a "folder" that is a file cannot be written into, even by root
    blocker.write_text("")
    with pytest.raises(OutputError, match="not writable"):
        finetune(_config(pruned, blocker / "ft.safetensors"))


def test_distillation_learns_from_the_teacher_it_is_given(pruned, tmp_path):
    """Two different dense teachers, everything else equal: the student ends with different weights
    (a run that ignored its teacher would give the same weights twice)."""
    weights = []
    for seed in (0, 1):
        teacher = pruned_checkpoint(tmp_path / f"teacher{seed}.safetensors", ratio=0.0, input_px=16, seed=seed)
        result = finetune(_config(pruned, tmp_path / f"kd{seed}.safetensors", epochs=1, teacher=str(teacher),
                                  kd_alpha=0.7, optimizer="adamw", lr=1e-3, eval_initial=False, save_every=0))
        assert result.epochs[0]["train_loss"] > 0
        assert read_checkpoint(result.outputs.best).metadata["finetune"]["kd_alpha"] == 0.7
        weights.append(_weights(result.outputs.last))
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).tensors


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tiny, tmp_path):
    args = ["finetune", str(tiny), "--data", "synthetic:320", "--eval-data", "synthetic:32", "--epochs", "2",
            "--batch-size", "16", "--lr", "0.05", "--device", "cpu", "--save-every", "3", "--quiet",
            "--no-eval-initial", "--seed", "3"]
    reference = tmp_path / "ref" / "ft.safetensors"
    killed_out = tmp_path / "run" / "ft.safetensors"
    state = killed_out.with_name("ft.state.pt")
    process = start_agfprune([*args, "--out", killed_out], stderr=subprocess.PIPE)
    signal_when(process, state.exists, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 0 and 0 < saved["step_in_epoch"] < 20  # killed mid-epoch
    assert not killed_out.exists()

    from agfprune.cli.app import run

    assert run([*args, "--out", str(killed_out), "--resume"]) == 0
    assert run([*args, "--out", str(reference)]) == 0
    resumed, uninterrupted = _weights(killed_out.with_name("ft.last.safetensors")), _weights(
        reference.with_name("ft.last.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    log_resumed = [json.loads(x) for x in killed_out.with_name("ft.log.jsonl").read_text().splitlines()]
    log_reference = [json.loads(x) for x in reference.with_name("ft.log.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in log_resumed] == [r["val_top1"] for r in log_reference]
    assert [r["train_loss"] for r in log_resumed] == [r["train_loss"] for r in log_reference]


@pytest.mark.slow
def test_sigint_exits_130_and_leaves_no_partial_files(tiny, tmp_path):
    out = tmp_path / "run" / "ft.safetensors"
    process = start_agfprune(["finetune", tiny, "--data", "synthetic:320", "--eval-data", "synthetic:16", "--epochs", "3",
                              "--batch-size", "16", "--device", "cpu", "--save-every", "1", "--quiet",
                              "--no-eval-initial", "--out", out], stderr=subprocess.PIPE, text=True)
    state = out.with_name("ft.state.pt")
    signal_when(process, state.exists, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    torch.load(state, weights_only=True)  # the state file is complete
