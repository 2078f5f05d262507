"""The Python API (agfprune.prune/save/load) on plain nn.Modules and timm models, and the runnable
example of docs/python.md, executed as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import agfprune
from agfprune.core.errors import ModelError, UsageError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "python.md"


class TwoConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _batches(count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 4, (8,), generator=generator))
            for _ in range(count)]


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(DOCS), "exec"), {"__name__": "docs_python_example"})  # noqa: S102
    assert (tmp_path / "resnet18-pruned-5cls.safetensors").exists()


def test_plain_module_prune_save_load_equal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TwoConvNet().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pruned, record = agfprune.prune(net, torch.randn(1, 3, 16, 16), ratio=0.5, data=_batches(), calib_batches=2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the input is untouched
    assert record.metric == "agf"  # the default with data
    assert record.bn_recalibration_batches == 2  # bn_batches defaults to calib_batches
    # independent count: conv1 16->8 and conv2 32->16 outputs, fc keeps its 4 classes
    expected = (3 * 9 * 8 + 8) + 2 * 8 + (8 * 9 * 16 + 16) + 2 * 16 + (16 * 4 + 4)
    assert sum(p.numel() for p in pruned.parameters()) == expected == record.params_after
    path = tmp_path / "net.safetensors"
    agfprune.save(pruned, path)
    reloaded = agfprune.load(path, model=TwoConvNet())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(pruned.eval()(x), reloaded(x))
    with pytest.raises(ModelError, match=r"model=.*TwoConvNet\(\)"):
        agfprune.load(path)


def test_without_data_magnitude_and_bn_untouched() -> None:
    torch.manual_seed(0)
    net = TwoConvNet().eval()
    pruned, record = agfprune.prune(net, torch.randn(1, 3, 16, 16), ratio=0.25)
    assert record.metric == "magnitude-l2"
    assert record.bn_recalibration_batches == 0
    with pytest.raises(UsageError, match="needs calibration data"):
        agfprune.prune(net, torch.randn(1, 3, 16, 16), ratio=0.25, metric="agf")


def test_prune_heads_refused_without_attention() -> None:
    with pytest.raises(UsageError, match="no prunable attention heads"):
        agfprune.prune(TwoConvNet(), torch.randn(1, 3, 16, 16), ratio=0.25, prune_heads=True)


def test_generator_data_is_consumed_once_per_pass() -> None:
    torch.manual_seed(0)
    stream = iter(_batches(6))
    _pruned, record = agfprune.prune(TwoConvNet(), torch.randn(1, 3, 16, 16), ratio=0.5, data=stream,
                                     calib_batches=2, bn_batches=3)
    assert record.bn_recalibration_batches == 3


def test_timm_vit_heads_reset_classifier_and_reload(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval()
    pruned, record = agfprune.prune(vit, torch.randn(1, 3, 32, 32), ratio=0.25, head_ratio=0.5)
    assert record.prune_heads and record.head_ratio == 0.5
    # 3 heads: head_ratio 0.5 removes round(1.5) = 2 (ratio 0.25 alone would remove round(0.75) = 1)
    assert [block.attn.num_heads for block in pruned.blocks] == [1] * 12
    assert pruned.embed_dim == pruned.num_features == pruned.head.in_features == 144  # 192 - 25%
    pruned.reset_classifier(5)
    path = tmp_path / "vit.safetensors"
    agfprune.save(pruned, path)
    reloaded = agfprune.load(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pruned.eval()(x), reloaded(x))
    assert reloaded(x).shape == (2, 5) and reloaded.num_classes == 5


def test_api_checkpoint_feeds_the_cli(tmp_path: Path, cli) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10, zero_init_last=False).eval()
    pruned, _record = agfprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    pruned.reset_classifier(5)
    path = tmp_path / "r18.safetensors"
    agfprune.save(pruned, path)
    result = cli("info", path, "--json")
    assert result.exit_code == 0, result.stderr
    assert '"num_classes": 5' in result.stdout


def test_a_saved_vit_built_at_its_own_size_feeds_the_cli(tmp_path: Path, cli) -> None:
    """A timm user builds a ViT at 32 px, saves it dense and prunes it with the CLI: the checkpoint
    records the size it was built for (its pretrained_cfg still says 224)."""
    import json

    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval()
    dense = tmp_path / "vit.safetensors"
    agfprune.save(vit, dense)
    info = json.loads(cli("info", dense, "--json").stdout)
    assert info["data_config"]["input_size"] == [3, 32, 32]
    out = tmp_path / "pruned.safetensors"
    result = cli("prune", dense, "--prune-heads", "--ratio", "0.5", "--out", out, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    assert [block.attn.num_heads for block in agfprune.load(out).blocks] == [1] * 12  # 3 heads, round(1.5) = 2 go
