"""Signal quality (error AUROC, heavy fraction to match heavy), the dynamic input-gradient signal,
bootstrap intervals and router.yaml paths, each against an independent computation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from agfprune.core.errors import ModelError, UsageError
from agfprune.core.models import create_model, load_model
from agfprune.core.routing import load_router
from agfprune.core.routing.cascade import Cascade, GradientCascade, make_cascade
from agfprune.core.routing.experts import RoutingLogits
from agfprune.core.routing.report import bootstrap_intervals, error_auroc, signal_quality
from agfprune.core.routing.router_file import ExpertRecord, RouterSpec, read_router, recorded_path, write_router
from agfprune.core.routing.signals import check_signal, compute_signal, dynamic_scores, extra_macs, get_signal


def _pairwise_auroc(scores: torch.Tensor, correct: torch.Tensor) -> float:
    """Brute force: over all (error, correct) pairs, 1 if the error has the lower signal, 1/2 on ties."""
    wrong, right = scores[~correct], scores[correct]
    lower = (wrong[:, None] < right[None, :]).double()
    ties = (wrong[:, None] == right[None, :]).double()
    return float((lower + 0.5 * ties).mean())


@pytest.mark.parametrize("ties", [False, True])
def test_error_auroc_equals_pairwise_count(ties):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(300, generator=generator)
    if ties:
        scores = (scores * 2).round()
    correct = torch.rand(300, generator=generator) < torch.sigmoid(2 * scores)  # higher signal, more often right
    value = error_auroc(scores, correct)
    assert value == pytest.approx(_pairwise_auroc(scores, correct), abs=1e-12)
    assert value > 0.6
    assert error_auroc(-scores, correct) == pytest.approx(1 - value, abs=1e-12)
    assert error_auroc(scores, torch.ones(300, dtype=torch.bool)) is None


def test_signal_quality_match_heavy_fraction_is_the_fewest_calls():
    generator = torch.Generator().manual_seed(1)
    samples = 1000  # 0.1 points per sample, so a tolerance slipped in would change the answer
    light = torch.randn(samples, 10, generator=generator) * 2
    heavy = torch.randn(samples, 10, generator=generator) * 2
    labels = torch.randint(0, 10, (samples,), generator=generator)
    heavy[torch.arange(600), labels[:600]] += 6
    logits = RoutingLogits(light, heavy, labels, {})
    quality = signal_quality(logits, "margin", light_macs=1000.0)
    scores = compute_signal("margin", light)
    heavy_accuracy = heavy.argmax(1).eq(labels).float().mean()
    best = None
    for threshold in sorted(set(scores.tolist())) + [float("inf")]:  # brute force over thresholds
        to_heavy = scores < threshold
        prediction = torch.where(to_heavy, heavy.argmax(1), light.argmax(1))
        if prediction.eq(labels).float().mean() >= heavy_accuracy - 1e-9:
            calls = int(to_heavy.sum())
            best = calls if best is None else min(best, calls)
    assert quality["match_heavy_fraction"] == pytest.approx(best / samples)
    assert quality["match_heavy_top1"] >= 100 * float(heavy_accuracy) - 1e-6
    assert quality["extra_macs"] == 0 and quality["dynamic"] is False


@torch.enable_grad()
def _per_sample_gradient_norms(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One sample at a time, so no batch effect can leak into another sample's gradient."""
    norms = []
    for sample in x:
        single = sample[None].clone().requires_grad_(True)
        logits = model(single)
        loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
        (gradient,) = torch.autograd.grad(loss, single)
        norms.append(gradient.norm())
    return torch.stack(norms).detach()


def test_input_grad_signal_is_minus_each_samples_own_gradient_norm():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the signal turns gradients on itself
        logits, scores = dynamic_scores("input-grad", model, x)
        expected_logits = model(x)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert torch.allclose(scores, -_per_sample_gradient_norms(model, x), rtol=1e-4, atol=1e-7)
    assert (scores < 0).all() and not logits.requires_grad
    assert extra_macs("input-grad", 100.0) == pytest.approx(100.0) and extra_macs("margin", 100.0) == 0.0


def test_dynamic_signal_names_are_checked():
    assert check_signal("input-grad") == "input-grad"
    with pytest.raises(UsageError, match="input-grad"):
        check_signal("gradient")
    with pytest.raises(UsageError, match="needs the light expert's gradients"):
        get_signal("input-grad")


@torch.no_grad()
def test_gradient_cascade_routes_by_the_dynamic_signal():
    torch.manual_seed(0)
    light, heavy = create_model("cifar_resnet20").eval(), create_model("cifar_resnet20").eval()
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    scores = -_per_sample_gradient_norms(light, x)
    ordered = scores.sort().values
    threshold = float(ordered[4] + ordered[5]) / 2  # between two samples: batching noise cannot flip one
    cascade = make_cascade(light, heavy, "input-grad", threshold)
    assert isinstance(cascade, GradientCascade)
    assert not isinstance(make_cascade(light, heavy, "margin", 0.5), GradientCascade)
    output, to_heavy = cascade.route(x)
    assert 0 < int(to_heavy.sum()) < 10
    assert torch.equal(to_heavy, scores < threshold)
    assert torch.allclose(output[~to_heavy], light(x)[~to_heavy], atol=1e-5)
    assert torch.allclose(output[to_heavy], heavy(x)[to_heavy], atol=1e-5)


def test_bootstrap_intervals_cover_the_estimate_with_binomial_width():
    generator = torch.Generator().manual_seed(4)
    samples = 2000
    light_correct = torch.rand(samples, generator=generator) < 0.8
    heavy_correct = torch.rand(samples, generator=generator) < 0.9
    to_heavy = torch.rand(samples, generator=generator) < 0.3
    result = bootstrap_intervals(light_correct, heavy_correct, to_heavy, resamples=1000, seed=0)
    router = torch.where(to_heavy, heavy_correct, light_correct).double()
    p = float(router.mean())
    low, high = result["router_top1"]
    assert low < 100 * p < high
    half_width = 100 * 1.96 * (p * (1 - p) / samples) ** 0.5  # normal approximation
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    f = float(to_heavy.double().mean())
    low, high = result["heavy_fraction"]
    assert low < f < high and (high - low) / 2 == pytest.approx(1.96 * (f * (1 - f) / samples) ** 0.5, rel=0.15)
    difference = 100 * (p - float(heavy_correct.double().mean()))
    assert result["router_minus_heavy"][0] < difference < result["router_minus_heavy"][1]
    everything_heavy = bootstrap_intervals(light_correct, heavy_correct, torch.ones(samples, dtype=torch.bool),
                                           resamples=200, seed=0)
    assert everything_heavy["router_minus_heavy"] == [0.0, 0.0] and everything_heavy["heavy_fraction"] == [1.0, 1.0]


# -- router.yaml paths and records -------------------------------------------------------------

def test_recorded_path_is_relative_inside_the_router_folder_only(tmp_path):
    (tmp_path / "run" / "experts").mkdir(parents=True)
    inside = tmp_path / "run" / "experts" / "light.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    assert recorded_path(inside, tmp_path / "run") == "experts/light.safetensors"
    assert recorded_path(outside, tmp_path / "run") == str(outside.resolve())
    assert recorded_path(inside, None) == str(inside.resolve())


def _spec_in(folder: Path, light: Path, heavy: Path) -> RouterSpec:
    records = [ExpertRecord.from_loaded(load_model(checkpoint=path), None, router_dir=folder) for path in (light, heavy)]
    return RouterSpec(light=records[0], heavy=records[1], signal="confidence", threshold=0.5,
                      objective={"kind": "threshold", "value": 0.5}, calibration={})


def test_moved_router_folder_still_loads(tmp_path, experts):
    folder = tmp_path / "run"
    folder.mkdir()
    light = shutil.copy(experts[0], folder / "light.safetensors")
    write_router(folder / "router.yaml", _spec_in(folder, Path(light), experts[1]))
    document = yaml.safe_load((folder / "router.yaml").read_text())
    assert document["light"]["checkpoint"] == "light.safetensors"
    assert document["heavy"]["checkpoint"] == str(experts[1].resolve())  # outside the folder: absolute
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert isinstance(load_router(moved / "router.yaml"), Cascade)


@pytest.mark.parametrize("field, value, message", [("num_classes", 5, "different class counts"),
                                                   ("input_size", [3, 40, 40], "different input sizes")])
def test_router_with_disagreeing_expert_records_is_refused_before_loading(tmp_path, experts, field, value, message):
    spec = _spec_in(tmp_path, *experts)
    setattr(spec.heavy, field, value)
    spec.heavy.checkpoint = str(tmp_path / "missing.safetensors")  # never reached
    write_router(tmp_path / "router.yaml", spec)
    with pytest.raises(ModelError, match=message):
        read_router(tmp_path / "router.yaml")


@pytest.mark.parametrize("tolerance", [0.0, 0.5])
def test_sustained_match_heavy_is_the_first_point_that_holds_to_the_end(tolerance):
    from agfprune.core.routing.calibrate import Objective, select_point, threshold_sweep

    # an uninformative signal: the accuracy curve is a random walk that crosses the target early and dips
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (400,), generator=generator)
    guess = torch.where(torch.rand(400, generator=generator) < 0.88, labels, (labels + 1) % 10)
    light = torch.zeros(400, 10)
    light[torch.arange(400), guess] = torch.rand(400, generator=generator) * 3 + 0.1
    heavy = torch.randn(400, 10, generator=generator) * 0.1
    heavy[torch.arange(400), labels] += 3.0 * (torch.rand(400, generator=generator) < 0.9)
    sweep = threshold_sweep(light, heavy, labels, "confidence")
    target = sweep.heavy_top1 - tolerance
    holds = [all(q.top1 >= target - 1e-9 for q in sweep.points[i:]) for i in range(len(sweep.points))]
    expected = sweep.points[holds.index(True)]  # brute force: first index from which every point holds
    first = select_point(sweep, Objective("match-heavy", tolerance))
    chosen = select_point(sweep, Objective("match-heavy", tolerance, sustained=True))
    assert chosen == expected and chosen.heavy_calls > first.heavy_calls
    with pytest.raises(UsageError, match="--sustained"):
        Objective("max-heavy-fraction", 0.5, sustained=True).validate()
