"""The guard of the paper's metric: AGF (and Taylor) of every channel equal the brute-force sum of
|a * dL/da| over that channel's removal sites only, on a tiny residual net in float64; the frozen
option-A shortcut contributes nothing; and pruning keeps the highest-scoring channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from agfprune.core.calibration import collect_statistics
from agfprune.core.metrics import get_metric
from agfprune.core.models.cifar_resnet import OptionAShortcut
from agfprune.core.pruning.groups import (attention_heads, build_graph, classifier_modules, group_key, iter_groups,
                                          model_sites, removal_sites)


class TinyResidual(nn.Module):
    """Stem, one residual block, an option-A downsampling block, and a GELU MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.shortcut = OptionAShortcut(4, 8)
        self.conv3, self.bn3 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv4, self.bn4 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 10)
        self.head = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(self.conv0(x)))
        h = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))) + h)
        h = F.relu(self.bn4(self.conv4(F.relu(self.bn3(self.conv3(h))))) + self.shortcut(h))
        return self.head(F.gelu(self.fc1(h.mean((2, 3)))))

    def get_classifier(self) -> nn.Module:
        return self.head


# group (root:side) -> its removal sites, written out by hand from the architecture
EXPECTED_SITES = {
    "conv0:out": ["bn0:out", "bn2:out"],        # stream of stage 1: every write into it
    "conv1:out": ["bn1:out"],                   # conv -> norm -> act
    "shortcut:out": ["bn4:out"],                # stage-2 stream: never the frozen shortcut
    "conv3:out": ["bn3:out"],
    "fc1:out": ["head:in"],                     # one producer, no norm: what the consumer reads (after GELU)
}


def _model() -> TinyResidual:
    torch.manual_seed(0)
    model = TinyResidual().double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, 8, 8, generator=generator, dtype=torch.float64),
             torch.randint(0, 5, (5,), generator=generator)) for _ in range(3)]


def _brute_force_site_utilities(model: nn.Module, batches) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per site: mean over samples and positions of |a*g| (AGF), mean over samples of |sum_p a*g| (Taylor)."""
    sites = {"bn0": "out", "bn1": "out", "bn2": "out", "bn3": "out", "bn4": "out", "head": "in",
             "shortcut": "out"}
    agf = {name: 0.0 for name in sites}
    taylor = {name: 0.0 for name in sites}
    positions = {name: 0 for name in sites}
    samples = 0
    for images, labels in batches:
        tensors = {}

        def keep(name, side):
            if side == "out":
                def hook(module, args, output):
                    tensors[name] = output
                return model.get_submodule(name).register_forward_hook(hook)

            def pre(module, args):
                tensors[name] = args[0]
            return model.get_submodule(name).register_forward_pre_hook(pre)

        handles = [keep(name, side) for name, side in sites.items()]
        loss = F.cross_entropy(model(images), labels)
        names = list(tensors)
        grads = torch.autograd.grad(loss, [tensors[n] for n in names])
        for handle in handles:
            handle.remove()
        for name, grad in zip(names, grads):
            product = (tensors[name] * grad).detach()
            if product.ndim == 4:
                product = product.flatten(2).transpose(1, 2)  # (N, P, C)
            else:
                product = product[:, None, :]
            agf[name] = agf[name] + product.abs().sum((0, 1))
            taylor[name] = taylor[name] + product.sum(1).abs().sum(0)
            positions[name] += product.shape[0] * product.shape[1]
        samples += len(images)
    return ({n: agf[n] / positions[n] for n in sites}, {n: taylor[n] / samples for n in sites})


def _groups(model: nn.Module):
    graph = build_graph(model, torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    return {group_key(group): group for group in iter_groups(graph, classifier_modules(model), attention_heads(model))}


def test_sites_are_norm_outputs_stream_writes_and_consumer_inputs_never_the_shortcut():
    groups = _groups(_model())
    assert {key: sorted(item.site.key for item in removal_sites(group)) for key, group in groups.items()} == \
        {key: sorted(sites) for key, sites in EXPECTED_SITES.items()}
    tapped = {site.key for site in model_sites(_model(), torch.zeros(1, 3, 8, 8, dtype=torch.float64))}
    assert tapped == {site for sites in EXPECTED_SITES.values() for site in sites}


@pytest.mark.parametrize("metric", ["agf", "taylor"])
def test_utility_is_the_brute_force_sum_over_removal_sites(metric):
    batches = _batches()
    stats = collect_statistics(_model(), batches, "cpu", batches=len(batches))
    agf, taylor = _brute_force_site_utilities(_model(), batches)
    reference = agf if metric == "agf" else taylor
    scorer = get_metric(metric, stats)
    assert scorer.normalizer == "none" and scorer.group_reduction == "sum"
    worst = 0.0
    for key, group in _groups(_model()).items():
        expected = sum(reference[site.split(":")[0]] for site in EXPECTED_SITES[key])
        worst = max(worst, float((scorer(group).double() - expected).abs().max()))
        assert float(expected.abs().max()) > 1e-6  # a real signal, not 0 == 0
    assert worst < 1e-6, worst
    # the shortcut's output is exactly zero on its padded channels: had it been a site, its
    # (zero) utility would have been added; it is not even tapped
    assert "shortcut" not in stats.out_abs
    assert float(agf["shortcut"][:2].abs().max()) == 0.0


def test_agf_and_taylor_differ_where_positions_exist():
    """Reading Taylor statistics for AGF (or the reverse) changes the scores of conv groups."""
    stats = collect_statistics(_model(), _batches(), "cpu", batches=3)
    group = _groups(_model())["conv1:out"]
    agf, taylor = get_metric("agf", stats)(group), get_metric("taylor", stats)(group)
    assert float((agf - taylor).abs().max()) > 1e-4 * float(agf.abs().max())
