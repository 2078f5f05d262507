"""Exports verify themselves against PyTorch and leave nothing behind when they fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from agfprune.core.errors import NumericalError, UsageError
from agfprune.core.export import export_model
from agfprune.core.models import load_model
from tests.core.pruned_models import pruned_checkpoint


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    return pruned_checkpoint(tmp_path_factory.mktemp("pruned") / "pruned.safetensors", ratio=0.5, input_px=16)


def test_onnx_has_dynamic_batch_and_matches_pytorch(pruned, tmp_path):
    import onnxruntime

    loaded = load_model(checkpoint=pruned)
    out = tmp_path / "model.onnx"
    report = export_model(loaded, "onnx", out, batch_size=2)
    assert report.max_abs_diff <= 1e-4 and report.batch_sizes == [1, 2, 3]
    assert report.detail["opset"] and out.stat().st_size == report.bytes
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 3, 16, 16)
    produced = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(produced, loaded.model(images), atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("mode", ["trace", "script"])
def test_torchscript_matches_pytorch(pruned, tmp_path, mode):
    loaded = load_model(checkpoint=pruned)
    out = tmp_path / f"model-{mode}.pt"
    report = export_model(loaded, "torchscript", out, torchscript_mode=mode)
    assert report.max_abs_diff <= 1e-4
    module = torch.jit.load(str(out))
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(module(images), loaded.model(images), atol=1e-4)


def test_safetensors_export_reloads_pruned(pruned, tmp_path):
    loaded = load_model(checkpoint=pruned)
    out = tmp_path / "model.safetensors"
    report = export_model(loaded, "safetensors", out)
    assert report.max_abs_diff == 0.0
    again = load_model(checkpoint=out)
    assert again.fingerprint == loaded.fingerprint
    assert again.metadata["pruning"] == loaded.metadata["pruning"]


def test_failed_parity_writes_nothing(pruned, tmp_path):
    loaded = load_model(checkpoint=pruned)
    out = tmp_path / "model.pt"
    with pytest.raises(NumericalError, match="differs from PyTorch"):
        export_model(loaded, "torchscript", out, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_runtime_is_a_clear_error(pruned, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    loaded = load_model(checkpoint=pruned)
    with pytest.raises(UsageError, match=r"agfprune\[export\]"):
        export_model(loaded, "onnx", tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="--format"):
        export_model(loaded, "tflite", tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []
