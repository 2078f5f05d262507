"""The demo drives every command end to end (here at a tiny size)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import agfprune


def test_demo_runs_the_whole_pipeline(cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = cli("demo", "--out", out, "--train-images", "512", "--val-images", "128", "--epochs", "1",
                 "--finetune-epochs", "1", "--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    steps = [step["step"] for step in json.loads(result.stdout)["steps"]]
    assert steps[:4] == ["data", "train dense", "eval dense", "calibrate"]
    assert {"score", "prune (agf)", "finetune (KD)", "eval pruned", "route"} <= set(steps)
    assert steps[-1].startswith("export")
    pruned = agfprune.load(str(out / "pruned-finetuned.safetensors"))
    dense = agfprune.load(str(out / "dense.safetensors"))
    assert sum(p.numel() for p in pruned.parameters()) < 0.2 * sum(p.numel() for p in dense.parameters())
    cascade = agfprune.load_router(str(out / "router.yaml"))
    assert cascade(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert not list(out.glob(".*.tmp"))
