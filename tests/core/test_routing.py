"""Routing: signals, threshold sweep and objectives, the Cascade, router.yaml, costs, data halves."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

from agfprune.core.data import split_half
from agfprune.core.errors import ModelError, UsageError
from agfprune.core.models import create_model, load_model
from agfprune.core.routing import Cascade, compute_signal, get_signal, load_router
from agfprune.core.routing.calibrate import (Objective, heavy_mask, point_at_threshold, select_point,
                                             threshold_sweep)
from agfprune.core.routing.cascade import script_cascade
from agfprune.core.routing.cost import routing_cost
from agfprune.core.routing.experts import check_compatible
from agfprune.core.routing.router_file import ExpertRecord, RouterSpec, read_router, write_router
from tests.conftest import random_checkpoint




def _random_logits(seed: int, samples: int = 200, classes: int = 10, ties: bool = False):
    generator = torch.Generator().manual_seed(seed)
    light = torch.randn(samples, classes, generator=generator) * 2
    if ties:
        light = light.round()  # many equal signal values
    heavy = torch.randn(samples, classes, generator=generator) * 2
    labels = torch.randint(0, classes, (samples,), generator=generator)
    heavy[torch.arange(samples)[: samples // 2], labels[: samples // 2]] += 5  # heavy is better
    return light, heavy, labels


# -- signals ---------------------------------------------------------------------------------

def test_signals_on_known_probabilities():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    assert torch.allclose(compute_signal("confidence", logits), torch.tensor([0.7, 1 / 3]))
    assert torch.allclose(compute_signal("margin", logits), torch.tensor([0.5, 0.0]), atol=1e-6)
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert torch.allclose(compute_signal("entropy", logits), torch.tensor([-entropy, -math.log(3)]))


def test_entropy_is_finite_for_saturated_logits():
    logits = torch.tensor([[1000.0, -1000.0, 0.0]])
    assert torch.isfinite(compute_signal("entropy", logits)).all()
    assert float(compute_signal("entropy", logits)) == pytest.approx(0.0, abs=1e-6)


def test_unknown_signal_lists_valid_ones():
    with pytest.raises(UsageError, match="confidence, entropy, margin"):
        get_signal("certainty")


# -- sweep and objectives --------------------------------------------------------------------

@pytest.mark.parametrize("signal", ["confidence", "margin", "entropy"])
@pytest.mark.parametrize("ties", [False, True])
def test_sweep_points_match_brute_force(signal, ties):
    light, heavy, labels = _random_logits(3, ties=ties)
    sweep = threshold_sweep(light, heavy, labels, signal)
    assert sweep.points[0].heavy_calls == 0 and sweep.points[-1].heavy_calls == len(labels)
    assert sweep.points[0].top1 == pytest.approx(sweep.light_top1)
    assert sweep.points[-1].top1 == pytest.approx(sweep.heavy_top1)
    for point in sweep.points:
        direct = point_at_threshold(light, heavy, labels, signal, point.threshold)
        assert direct.heavy_calls == point.heavy_calls
        assert direct.top1 == pytest.approx(point.top1)
    if ties:
        assert len(sweep.points) < len(labels) + 1


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 5.0])
def test_match_heavy_is_fewest_calls_within_tolerance(tolerance):
    light, heavy, labels = _random_logits(4)
    sweep = threshold_sweep(light, heavy, labels, "confidence")
    point = select_point(sweep, Objective("match-heavy", tolerance))
    assert point.top1 >= sweep.heavy_top1 - tolerance - 1e-9
    cheaper = [p for p in sweep.points if p.heavy_calls < point.heavy_calls]
    assert all(p.top1 < sweep.heavy_top1 - tolerance for p in cheaper)
    assert int(heavy_mask(compute_signal("confidence", light), point.threshold).sum()) == point.heavy_calls


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_max_heavy_fraction_respects_budget(fraction):
    light, heavy, labels = _random_logits(5)
    sweep = threshold_sweep(light, heavy, labels, "margin")
    point = select_point(sweep, Objective("max-heavy-fraction", fraction))
    assert point.heavy_calls <= fraction * len(labels)
    assert all(p.top1 <= point.top1 for p in sweep.points if p.heavy_calls <= fraction * len(labels))


def test_fixed_threshold_is_kept():
    light, heavy, labels = _random_logits(6)
    sweep = threshold_sweep(light, heavy, labels, "confidence")
    point = select_point(sweep, Objective("threshold", 0.5), light, heavy, labels)
    assert point.threshold == pytest.approx(0.5)
    assert point.heavy_calls == int((compute_signal("confidence", light) < 0.5).sum())


@pytest.mark.parametrize("objective", [Objective("max-heavy-fraction", 1.5), Objective("match-heavy", -1.0),
                                       Objective("cheapest", 0.0)])
def test_invalid_objectives(objective):
    with pytest.raises(UsageError):
        objective.validate()


def test_pareto_points_improve_monotonically():
    light, heavy, labels = _random_logits(7)
    pareto = [p for p in threshold_sweep(light, heavy, labels, "confidence").points if p.pareto]
    assert all(a.top1 < b.top1 and a.heavy_calls < b.heavy_calls for a, b in zip(pareto, pareto[1:]))


# -- cascade ---------------------------------------------------------------------------------

def _pair(seed_light: int = 0, seed_heavy: int = 1):
    torch.manual_seed(seed_light)
    light = create_model("cifar_resnet20").eval()
    torch.manual_seed(seed_heavy)
    heavy = create_model("cifar_resnet20").eval()
    return light, heavy


@torch.no_grad()
@pytest.mark.parametrize("signal", ["confidence", "margin", "entropy"])
def test_cascade_is_light_above_threshold_and_heavy_below_exactly(signal):
    light, heavy = _pair()
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    light_logits = light(x)
    scores = compute_signal(signal, light_logits)
    threshold = float(scores.median())
    cascade = Cascade(light, heavy, signal, threshold).eval()
    output, to_heavy = cascade.route(x)
    expected_heavy = scores < threshold
    assert torch.equal(to_heavy, expected_heavy) and 0 < int(to_heavy.sum()) < len(x)
    assert torch.equal(output[~to_heavy], light_logits[~to_heavy])
    assert torch.equal(output[to_heavy], heavy(x[to_heavy]))
    assert torch.allclose(output[to_heavy], heavy(x)[to_heavy], atol=1e-5)


@torch.no_grad()
def test_cascade_all_light_and_all_heavy():
    light, heavy = _pair()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(Cascade(light, heavy, "confidence", 0.0)(x), light(x))
    assert torch.equal(Cascade(light, heavy, "confidence", 1.01)(x), heavy(x))


@torch.no_grad()
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_cascade_matches_eager(tmp_path):
    light, heavy = _pair()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    threshold = float(compute_signal("margin", light(x)).median())
    cascade = Cascade(light, heavy, "margin", threshold).eval()
    scripted = script_cascade(cascade, (3, 32, 32))
    torch.jit.save(scripted, str(tmp_path / "c.pt"))
    reloaded = torch.jit.load(str(tmp_path / "c.pt"))
    assert float(reloaded.threshold) == pytest.approx(threshold)
    assert torch.allclose(reloaded(x), cascade(x), atol=1e-5)
    assert torch.equal(reloaded.route(x)[1], cascade.route(x)[1])


# -- router.yaml -----------------------------------------------------------------------------

def _spec(light: Path, heavy: Path, threshold: float = 0.6) -> RouterSpec:
    records = [ExpertRecord.from_loaded(load_model(checkpoint=path), None) for path in (light, heavy)]
    return RouterSpec(light=records[0], heavy=records[1], signal="confidence", threshold=threshold,
                      objective={"kind": "threshold", "value": threshold},
                      calibration={"data": "synthetic:64", "split_half": "first", "split_seed": 0})


def test_router_file_round_trip_and_load(tmp_path, experts):
    spec = _spec(*experts, threshold=0.123456789)
    write_router(tmp_path / "router.yaml", spec)
    again = read_router(tmp_path / "router.yaml")
    assert again == spec
    cascade = load_router(tmp_path / "router.yaml")
    assert isinstance(cascade, Cascade)
    assert float(cascade.threshold) == pytest.approx(0.123456789)
    assert not list(tmp_path.glob(".*.tmp"))


def test_fingerprint_mismatch_is_explained(tmp_path, experts):
    light = tmp_path / "light.safetensors"
    light.write_bytes(experts[0].read_bytes())
    write_router(tmp_path / "router.yaml", _spec(light, experts[1]))
    random_checkpoint(light, 42)  # retrained in place: same path, new weights
    with pytest.raises(ModelError, match="light expert .* fingerprint .* re-run `agfprune route calibrate`"):
        load_router(tmp_path / "router.yaml")


@pytest.mark.parametrize("text, message", [
    ("format: something-else\n", "not an agfprune router"),
    ("format: agfprune-router\nformat_version: 99\n", "newer"),
    ("format: agfprune-router\nformat_version: 1\nsignal: certainty\nthreshold: 0.5\n", "unknown signal"),
    ("format: agfprune-router\nformat_version: abc\n", "field 'format_version'"),
    ("format: agfprune-router\nformat_version: 1\nsignal: confidence\nthreshold: .nan\n", "field 'threshold'"),
    ("format: agfprune-router\nformat_version: 1\nsignal: confidence\nthreshold: -.inf\n", "field 'threshold'"),
    ("a: &a [1]\nb: *a\n", "aliases"),
    ("[unclosed", "not a readable YAML"),
])
def test_bad_router_files(tmp_path, text, message):
    (tmp_path / "router.yaml").write_text(text)
    with pytest.raises(ModelError, match=message):
        read_router(tmp_path / "router.yaml")


def test_experts_must_agree_on_classes_and_input_size(tmp_path):
    base = load_model(checkpoint=random_checkpoint(tmp_path / "a.safetensors", 0))
    other_classes = load_model(checkpoint=random_checkpoint(tmp_path / "b.safetensors", 1, num_classes=5))
    other_size = load_model(checkpoint=random_checkpoint(tmp_path / "c.safetensors", 2, input_size=(3, 40, 40)))
    with pytest.raises(ModelError, match="different class counts"):
        check_compatible(base, other_classes)
    with pytest.raises(ModelError, match="different input sizes"):
        check_compatible(base, other_size)


# -- costs and data halves -------------------------------------------------------------------

def test_two_costs_and_break_even():
    cost = routing_cost("MACs", light=30.0, heavy=100.0, heavy_fraction=0.5)
    assert cost.cascade == pytest.approx(80.0)  # 30 + 0.5·100
    assert cost.mixture == pytest.approx(65.0)  # 0.5·100 + 0.5·30
    assert cost.break_even_fraction == pytest.approx(0.7)
    assert routing_cost("MACs", 30.0, 100.0, 0.7).cascade == pytest.approx(100.0)


def test_split_halves_are_disjoint_complete_and_deterministic():
    dataset = list(range(101))
    first, second = split_half(dataset, "first", 3), split_half(dataset, "second", 3)
    a, b = set(first.indices), set(second.indices)
    assert not a & b and a | b == set(range(101)) and len(a) == 50
    assert split_half(dataset, "first", 3).indices == first.indices
    assert split_half(dataset, "first", 4).indices != first.indices
    assert split_half(dataset, "none", 3) is dataset
    with pytest.raises(UsageError, match="first, second, none"):
        split_half(dataset, "third", 0)


def test_measure_cascade_reports_median_spread_and_per_image(monkeypatch):
    """Per-batch medians, min/max over repeats and ms/image, from a scripted timer (after warm-up)."""
    import agfprune.core.routing.report as report

    class Runners:
        def score(self, batch): return "light"
        def heavy(self, batch): return "heavy"
        def __call__(self, batch): return "cascade"

    # per repeat, ms per pass: light 10/30/20, heavy 40/60/50, cascade 25/45/35; warm-up passes are 999
    script = {"light": [999, 10, 30, 20], "heavy": [999, 40, 60, 50], "cascade": [999, 25, 45, 35]}
    monkeypatch.setattr(report, "_timed", lambda function, batch, device: script[function(batch)].pop(0))
    timings = report.measure_cascade(Runners(), [torch.zeros(4, 3, 8, 8)], torch.device("cpu"), repeats=3)
    assert (timings["light_ms"], timings["light_ms_min"], timings["light_ms_max"]) == (20, 10, 30)
    assert (timings["heavy_ms"], timings["heavy_ms_min"], timings["heavy_ms_max"]) == (50, 40, 60)
    assert (timings["cascade_ms"], timings["cascade_ms_min"], timings["cascade_ms_max"]) == (35, 25, 45)
    assert (timings["light_ms_per_image"], timings["cascade_ms_per_image"]) == (5, 8.75)
    assert timings["cascade_vs_heavy"] == pytest.approx(statistics.median([25 / 40, 45 / 60, 35 / 50]))
