"""Prunability matrix: every supported architecture prunes at 0.5 and 0.75 with agf and magnitude;
the pruned net runs, is smaller and cheaper, and reloads from its checkpoint bit for bit.

Inputs are 32 px (timm kwargs shrink the ViTs' patch grid), batches of 2, AGF statistics from one
tiny synthetic batch: the point is structure, not accuracy. docs/pruning.md lists this matrix.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

import agfprune
from agfprune.core.metrics import get_metric
from agfprune.core.models import load_model
from agfprune.core.pruning import MetricScorer, PruneOptions, prune_model, save_pruned


INPUT = (3, 32, 32)
VIT = dict(img_size=32, patch_size=8, num_classes=10)
ARCHS = {
    "resnet18": dict(num_classes=10, zero_init_last=False),
    "resnet50": dict(num_classes=10, zero_init_last=False),
    "vit_tiny_patch16_224": VIT,
    "deit_tiny_patch16_224": VIT,
    "convnext_atto": dict(num_classes=10),
    "mobilenetv3_small_100": dict(num_classes=10),
    "efficientnet_b0": dict(num_classes=10),
    "cifar_resnet20": {},
    "cifar_resnet56": {},
}
SLOW = {"resnet50", "efficientnet_b0", "cifar_resnet56", "deit_tiny_patch16_224"}


@lru_cache(maxsize=1)
def _dense(arch: str):
    """The dense model and its AGF statistics (one synthetic batch of 2), built once per arch."""
    from agfprune.core.calibration import collect_statistics

    torch.manual_seed(0)
    loaded = load_model(arch, timm_kwargs=ARCHS[arch])
    batch = [(torch.randn(2, *INPUT), torch.tensor([1, 7]))]
    stats = collect_statistics(loaded.model, batch, "cpu", batches=1)
    return loaded, stats


def _cases():
    for arch in ARCHS:
        marks = [pytest.mark.slow] if arch in SLOW else []
        for ratio in (0.5, 0.75):
            for metric in ("agf", "magnitude-l2"):
                yield pytest.param(arch, ratio, metric, marks=marks, id=f"{arch}-{ratio}-{metric}")


@pytest.mark.parametrize("arch,ratio,metric", list(_cases()))
def test_prunes_runs_shrinks_and_reloads(arch: str, ratio: float, metric: str, tmp_path: Path) -> None:
    loaded, stats = _dense(arch)
    scorer = MetricScorer(metric, lambda model, step: get_metric(metric, stats=stats))
    result = prune_model(loaded, scorer, PruneOptions(ratio=ratio), input_size=INPUT)
    record = result.record
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        out = result.model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert record.params_after < record.params_before
    assert record.macs_after < record.macs_before
    # channel ratio r removes roughly 1-(1-r)^2 of the MACs; a floor that catches no-op pruning
    assert record.macs_reduction > 0.5 * ratio
    path = tmp_path / "pruned.safetensors"
    save_pruned(path, loaded, result, verify=False)
    rebuilt = agfprune.load(str(path))
    with torch.no_grad():
        assert torch.equal(out, rebuilt(x))
    # still a normal timm model: the head can be replaced, on the pruned model and on its reload
    for model in (result.model, rebuilt):
        _assert_widths_true(model, x)
        model.reset_classifier(3)
        with torch.no_grad():
            assert model(x).shape == (2, 3)


def _assert_widths_true(model: torch.nn.Module, x: torch.Tensor) -> None:
    """num_features/embed_dim/head_hidden_size/feature_info equal the widths a forward pass produces."""
    seen: dict[str, int] = {}
    hooks = [model.get_submodule(info["module"]).register_forward_hook(
        lambda _m, _i, out, name=info["module"]: seen.__setitem__(name, out.shape[1] if out.dim() == 4 else out.shape[-1]))
        for info in model.feature_info]
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
    for hook in hooks:
        hook.remove()
    width = features.shape[1] if features.dim() == 4 else features.shape[-1]
    assert model.num_features == width
    assert getattr(model, "embed_dim", width) == width
    assert model.head_hidden_size == pre_logits.shape[-1]
    assert {info["module"]: info["num_chs"] for info in model.feature_info} == seen
