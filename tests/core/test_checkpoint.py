"""Checkpoint files: no pickle execution, integrity checks, round trips, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from agfprune.core.checkpoint import read_checkpoint, structure_diff, write_checkpoint
from agfprune.core.errors import ModelError
from agfprune.core.models import create_model, load_model
from tests.conftest import random_checkpoint, random_model


def test_round_trip_gives_equal_outputs(tmp_path: Path) -> None:
    model = random_model(seed=0)
    random_checkpoint(tmp_path / "m.safetensors", seed=0)
    loaded = load_model(checkpoint=tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded.model(x))
    assert loaded.arch == "cifar_resnet20"
    assert not list(tmp_path.glob(".*.tmp"))


def test_structure_is_rebuilt_from_metadata(tmp_path: Path) -> None:
    """A narrower conv1/bn1 pair (as pruning leaves it) is rebuilt from the file alone."""
    base = create_model("cifar_resnet20").eval()
    changed = create_model("cifar_resnet20").eval()
    block = changed.layer1[0]
    keep = torch.arange(0, 16, 2)
    block.conv1.weight = nn.Parameter(block.conv1.weight.data[keep].clone())
    block.conv1.out_channels = len(keep)
    for name in ("weight", "bias"):
        setattr(block.bn1, name, nn.Parameter(getattr(block.bn1, name).data[keep].clone()))
    block.bn1.running_mean = block.bn1.running_mean[keep].clone()
    block.bn1.running_var = block.bn1.running_var[keep].clone()
    block.bn1.num_features = len(keep)
    block.conv2.weight = nn.Parameter(block.conv2.weight.data[:, keep].clone())
    block.conv2.in_channels = len(keep)
    structure = structure_diff(base, changed)
    assert structure["layer1.0.conv1"] == {"out_channels": 8}
    write_checkpoint(tmp_path / "p.safetensors", changed, arch="cifar_resnet20", timm_kwargs={},
                     data_config={}, structure=structure)
    rebuilt = load_model(checkpoint=tmp_path / "p.safetensors").model
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), changed(x))
    assert rebuilt.layer1[0].conv2.in_channels == 8


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    random_checkpoint(path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="fingerprint"):
        read_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    random_checkpoint(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="not a readable safetensors"):
        read_checkpoint(path)


def test_pickle_needing_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": nn.Linear(1, 1)}, path)
    with pytest.raises(ModelError, match="refused"):
        read_checkpoint(path)


def test_wrapped_and_prefixed_state_dicts_are_unwrapped(tmp_path: Path) -> None:
    model = create_model("cifar_resnet20")
    path = tmp_path / "wrapped.th"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = load_model("cifar_resnet20", path)
    assert loaded.metadata == {"epoch": 3}
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded.model(x), model.eval()(x))


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    model = create_model("cifar_resnet20")
    state = model.state_dict()
    state.pop("linear.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"1 missing keys \(linear.bias\); 1 unexpected keys \(extra.weight\)"):
        load_model("cifar_resnet20", tmp_path / "bad.pt")


def test_num_classes_is_inferred_from_the_classifier(tmp_path: Path) -> None:
    model = create_model("cifar_resnet20", num_classes=7)
    torch.save(model.state_dict(), tmp_path / "seven.pt")
    assert load_model("cifar_resnet20", tmp_path / "seven.pt").num_classes == 7


def test_metadata_is_json(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = create_model("cifar_resnet20")
    write_checkpoint(path, model, arch="cifar_resnet20", timm_kwargs={}, data_config={}, extra={"note": {"a": 1}})
    checkpoint = read_checkpoint(path)
    assert checkpoint.metadata["note"] == {"a": 1}
    assert checkpoint.metadata["format_version"] == 1
    assert json.dumps(checkpoint.metadata)
