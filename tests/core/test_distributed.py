"""Data-parallel fine-tuning: a real 2-process gloo job launched by torchrun on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agfprune.core.distributed import SINGLE, DistContext, all_reduce_sum, shard_indices
from agfprune.core.models import load_model
from tests.core.pruned_models import pruned_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_shards_partition_without_padding_and_single_process_sum_is_identity():
    contexts = [DistContext(rank=r, world_size=3) for r in range(3)]
    shards = [shard_indices(10, c) for c in contexts]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert shard_indices(5, SINGLE) == list(range(5))
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_sum(values.clone()), values)


@pytest.mark.slow
def test_torchrun_two_process_gloo_finetune(tmp_path):
    checkpoint = pruned_checkpoint(tmp_path / "tiny.safetensors", ratio=0.75, input_px=8)
    out = tmp_path / "out" / "ft.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               "-m", "agfprune", "finetune", str(checkpoint), "--data", "synthetic:128", "--eval-data", "synthetic:33",
               "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--save-every", "2",
               "--out", str(out), "--json", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # exactly one JSON document: only rank 0 reports
    assert result["world_size"] == 2
    # 128 images over 2 ranks at 16 per batch: 4 steps per epoch (a single process would take 8)
    assert [e["global_step"] for e in result["epochs"]] == [4, 8]
    # validation is sharded without padding and summed across ranks: every image counted once
    assert all(e["val_samples"] == 33 for e in result["epochs"]) and result["initial"]["val_samples"] == 33
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "ft.last.safetensors", "ft.log.jsonl", "ft.safetensors", "ft.state.pt"]
    reloaded = load_model(checkpoint=out)
    assert reloaded.metadata["finetune"]["world_size"] == 2


@pytest.mark.slow
def test_ranks_agree_on_rank_zeros_value_and_leave_the_group(tmp_path):
    """compare deals its unfinished cells from rank 0's listing: every rank must get that listing, even
    one that saw other files, and no process group may outlive the broadcast."""
    script = tmp_path / "agree.py"
    script.write_text(
        "import json, os\n"
        "import torch.distributed as dist\n"
        "from agfprune.core.distributed import agree_with_rank_zero\n"
        "value = agree_with_rank_zero(['seen by rank', int(os.environ['RANK'])])\n"
        "report = {'rank': int(os.environ['RANK']), 'value': value, 'group': dist.is_initialized()}\n"
        "open(os.path.join(os.path.dirname(__file__), f\"rank{report['rank']}.json\"), 'w').write(json.dumps(report))\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # one file per rank: both ranks share stdout, where their lines can interleave
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports == [{"rank": 0, "value": ["seen by rank", 0], "group": False},
                       {"rank": 1, "value": ["seen by rank", 0], "group": False}]
