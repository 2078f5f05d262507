"""`torchrun --nproc-per-node 2 -m agfprune compare`: cells spread over 2 CPU processes, rank 0 merges,
results.json byte-identical to one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import random_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _compare(out: Path, checkpoint: Path) -> list[str]:
    return ["-m", "agfprune", "compare", "--checkpoint", str(checkpoint), "--data", "synthetic:64",
            "--eval-data", "synthetic:32", "--metrics", "agf,random", "--ratios", "0.5", "--seeds", "1",
            "--calib-batches", "2", "--calib-batch-size", "16", "--bn-batches", "1", "--finetune-epochs", "1",
            "--finetune-limit", "32", "--baselines", "scratch", "--out", str(out), "--quiet", "--device", "cpu"]


def test_two_gloo_ranks_reproduce_the_single_process_results(tmp_path: Path) -> None:
    checkpoint = random_checkpoint(tmp_path / "dense.safetensors", 0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, *_compare(tmp_path / "one", checkpoint)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    spread = subprocess.run([*launcher, *_compare(tmp_path / "two", checkpoint)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert spread.returncode == 0, spread.stderr
    assert (tmp_path / "two" / "results.json").read_bytes() == (tmp_path / "one" / "results.json").read_bytes()
    assert spread.stdout.count("# agfprune compare") == 1  # only rank 0 prints the report
