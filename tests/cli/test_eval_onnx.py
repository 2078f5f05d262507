"""`eval FILE.onnx` runs the exported file in onnxruntime; `--compare-to` works across runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_one_line_error, random_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A random 16 px cifar_resnet20 checkpoint and its ONNX export."""
    from agfprune.core.export import export_model
    from agfprune.core.models import load_model

    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = random_checkpoint(folder / "m.safetensors", seed=0, input_size=(3, 16, 16))
    export_model(load_model(checkpoint=checkpoint), "onnx", folder / "m.onnx")
    return checkpoint, folder / "m.onnx"


def _independent_top1(checkpoint: Path, data: Path) -> float:
    """Top-1 of the PyTorch model over the whole .npz, computed without agfprune's eval code."""
    import numpy as np

    from agfprune.core.models import load_model

    loaded = load_model(checkpoint=checkpoint)
    with np.load(data) as archive:
        images, labels = archive["images"], archive["labels"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", antialias=True, align_corners=False)
    mean, std = (torch.tensor(loaded.data_config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        predictions = loaded.model((x - mean) / std).argmax(1)
    return 100.0 * float((predictions == torch.from_numpy(labels)).float().mean())


def test_eval_onnx_reports_like_a_checkpoint_and_compares_across_runtimes(cli, exported, tiny_npz) -> None:
    checkpoint, onnx_file = exported
    result = cli("eval", onnx_file, "--data", tiny_npz, "--threads", "1", "--batch-size", "16",
                 "--latency-repeats", "3", "--compare-to", checkpoint, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    dense = report["compare_to"]
    assert (report["runtime"], dense["runtime"]) == ("onnxruntime", "pytorch")
    assert report["samples"] == dense["samples"] == 64 and report["threads"] == dense["threads"] == 1
    # the same weights in two runtimes: the same predictions, and the export's recorded costs
    assert report["top1"] == dense["top1"] and report["top1_delta"] == 0
    assert report["loss"] == pytest.approx(dense["loss"], abs=1e-4)
    assert report["top1"] == pytest.approx(_independent_top1(checkpoint, tiny_npz), abs=100 / 64 + 1e-9)
    from agfprune.core.models import load_model

    model = load_model(checkpoint=checkpoint).model
    assert report["params"] == dense["params"] == sum(p.numel() for p in model.parameters())
    assert report["macs"] == dense["macs"] and report["macs_ratio"] == 1.0
    assert report["speedup"] == pytest.approx(dense["latency_ms"] / report["latency_ms"], rel=1e-2)
    assert ("faster" if report["speedup"] >= 1 else "slower") in report["summary"]


def test_eval_onnx_without_agfprune_metadata_uses_the_graph_and_timm_defaults(cli, exported, tmp_path) -> None:
    import onnx

    _, onnx_file = exported
    proto = onnx.load(str(onnx_file))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    result = cli("eval", foreign, "--data", "synthetic:20", "--latency-repeats", "0", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 20 and report["macs"] is None and report["model"] == "foreign"


def test_eval_onnx_bad_input(cli, exported, tmp_path) -> None:
    _, onnx_file = exported
    assert_one_line_error(cli("eval", onnx_file, "--model", "resnet18", "--data", "synthetic:8"), 2)
    assert_one_line_error(cli("eval", onnx_file, "--data", "synthetic:8", "--threads", "-1"), 2)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert_one_line_error(cli("eval", broken, "--data", "synthetic:8"), 4)
    assert_one_line_error(cli("eval", tmp_path / "missing.onnx", "--data", "synthetic:8"), 4)
