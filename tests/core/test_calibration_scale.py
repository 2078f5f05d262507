"""Calibration at scale: micro-batches and torchrun ranks give the sums of one plain pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from agfprune.core.calibration import CalibrationStats, collect_statistics, load_calibration
from agfprune.core.data import SeededBatches
from agfprune.core.distributed import SINGLE, all_reduce_sum_tree
from agfprune.core.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
SUM_KINDS = ("out_abs", "out_taylor", "in_abs", "in_taylor", "in_sq", "grad")
# keys that describe how a file was made rather than what it holds
RUN_DEPENDENT = {"seconds", "world_size", "micro_batch", "path"}


class ResidualNet(nn.Module):
    """Conv/BN with an in-place residual add (the clone-and-redo path) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        z = self.bn2(self.conv2(h))
        z += h
        return self.head(torch.relu(z).mean((2, 3)))


def _vit() -> nn.Module:
    from agfprune.core.models import create_model

    return create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                        num_classes=5)


def _batches(count: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=generator, dtype=torch.float64),
             torch.randint(0, 5, (size,), generator=generator)) for _ in range(count)]


def assert_same_sums(actual: CalibrationStats, expected: CalibrationStats, rtol: float, atol: float) -> None:
    for kind in SUM_KINDS:
        mine, theirs = getattr(actual, kind), getattr(expected, kind)
        assert sorted(mine) == sorted(theirs), kind
        for name in theirs:
            torch.testing.assert_close(mine[name], theirs[name], rtol=rtol, atol=atol, msg=f"{kind}/{name}")
    assert actual.counts == expected.counts
    assert (actual.samples, actual.batches) == (expected.samples, expected.batches)


@pytest.mark.parametrize("build", [ResidualNet, _vit], ids=["residual-conv", "vit-heads"])
@pytest.mark.parametrize("target", ["labels", "self"])
def test_micro_batches_give_the_sums_of_whole_batches(build, target: str) -> None:
    torch.manual_seed(0)
    model = build().double()
    batches = _batches(3, 7)
    whole = collect_statistics(model, batches, "cpu", batches=3, target=target)
    chunked = collect_statistics(model, batches, "cpu", batches=3, target=target, micro_batch=3)  # 3 + 3 + 1 images
    assert whole.in_abs or build is ResidualNet  # the ViT exercises the head-feature sums too
    assert_same_sums(chunked, whole, rtol=1e-10, atol=1e-14)
    assert chunked.metadata["micro_batch"] == 3 and chunked.metadata["batch_size"] == 7


def test_micro_batch_must_be_positive() -> None:
    with pytest.raises(UsageError, match="--micro-batch"):
        collect_statistics(ResidualNet(), _batches(1, 2), "cpu", batches=1, micro_batch=0)


def test_seeded_batches_split_over_ranks_are_the_single_process_batches() -> None:
    single = list(SeededBatches(50, 8, batches=5, seed=3))
    assert len(single) == 5 and all(len(batch) == 8 for batch in single)
    assert len({i for batch in single for i in batch}) == 40  # no image twice
    for world in (2, 3):
        shares = [list(SeededBatches(50, 8, batches=5, seed=3, rank=r, world_size=world)) for r in range(world)]
        assert [shares[i % world][i // world] for i in range(5)] == single
    assert [len(b) for b in SeededBatches(10, 4, batches=9, seed=0)] == [4, 4, 2]  # the data ends first
    assert list(SeededBatches(50, 8, batches=5, seed=4)) != single


def test_tree_all_reduce_is_identity_in_one_process() -> None:
    tree = {"a": torch.ones(2), "counts": {"x": 3}, "n": 5}
    assert all_reduce_sum_tree(tree, SINGLE, torch.device("cpu")) is tree


@pytest.mark.slow
def test_torchrun_two_process_calibration_equals_one_process(tmp_path: Path) -> None:
    """2 gloo processes on CPU write the file one process writes (sums up to float summation order)."""
    from agfprune.cli.app import run
    from tests.conftest import random_checkpoint

    checkpoint = random_checkpoint(tmp_path / "m.safetensors", seed=0, input_size=(3, 16, 16))
    common = ["-m", "agfprune", "calibrate", "--checkpoint", str(checkpoint), "--data", "synthetic:40",
              "--calib-batches", "5", "--calib-batch-size", "6", "--device", "cpu", "--seed", "2", "--json", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    assert run([*common[2:], "--out", str(tmp_path / "one.safetensors")]) == 0  # one process: in-process
    distributed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                  "--standalone", *common, "--out", str(tmp_path / "two.safetensors")],
                                 env=env, capture_output=True, text=True, timeout=300)
    assert distributed.returncode == 0, distributed.stderr[-3000:]
    report = json.loads(distributed.stdout)  # exactly one JSON document: only rank 0 reports
    assert report["processes"] == 2 and report["batches"] == 5 and report["samples"] == 30
    one, two = load_calibration(tmp_path / "one.safetensors"), load_calibration(tmp_path / "two.safetensors")
    assert_same_sums(two, one, rtol=1e-5, atol=1e-7)
    assert two.metadata["world_size"] == 2 and one.metadata["world_size"] == 1
    assert ({k: v for k, v in two.metadata.items() if k not in RUN_DEPENDENT}
            == {k: v for k, v in one.metadata.items() if k not in RUN_DEPENDENT})
