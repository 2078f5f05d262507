"""`agfprune route calibrate|eval|export` end to end on tiny models and synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agfprune.core.models import create_model
from tests.conftest import (JPEG_VAL, RESNET20_JPEG, RESNET56_JPEG, assert_one_line_error, needs_shared,
                            random_checkpoint)




DATA = "synthetic:64"


def _calibrate(cli, experts, out: Path, *extra: str):
    light, heavy = experts
    return cli("route", "calibrate", "--light", light, "--heavy", heavy, "--data", DATA, "--out", out,
               "--device", "cpu", "--batch-size", "32", "--quiet", *extra)


@pytest.mark.parametrize("objective", [("--match-heavy", "--tolerance", "3"),
                                       ("--max-heavy-fraction", "0.25"), ("--threshold", "0.3")])
def test_calibrate_meets_objective(cli, experts, tmp_path, objective):
    result = _calibrate(cli, experts, tmp_path / "router.yaml", "--signal", "margin", "--json", *objective)
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["samples"] == 32 and document["split_half"] == "first"
    if objective[0] == "--match-heavy":
        tolerance = float(objective[2]) if len(objective) > 1 else 0.0
        assert document["router_top1"] >= document["heavy_top1"] - tolerance - 1e-6
    elif objective[0] == "--max-heavy-fraction":
        assert document["heavy_fraction"] <= 0.25
    else:
        assert document["threshold"] == pytest.approx(0.3)
    assert (tmp_path / "router.yaml").is_file()


def test_eval_reports_held_out_half_plot_and_sweep(cli, experts, tmp_path):
    router = tmp_path / "router.yaml"
    assert _calibrate(cli, experts, router, "--match-heavy").exit_code == 0
    result = cli("route", "eval", "--router", router, "--data", DATA, "--device", "cpu", "--batch-size", "16",
                 "--latency-batches", "1", "--latency-repeats", "1", "--plot", tmp_path / "plot.png",
                 "--sweep", tmp_path / "sweep.json", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["split_half"] == "second" and report["held_out"] is True and report["samples"] == 32
    for key in ("light_top1", "heavy_top1", "router_top1", "random_top1", "heavy_fraction"):
        assert 0 <= report[key] <= 100
    macs, latency = report["macs"], report["latency"]
    f = report["heavy_fraction"]
    assert macs["cascade"] == pytest.approx(macs["light"] + f * macs["heavy"])
    assert macs["mixture"] == pytest.approx(f * macs["heavy"] + (1 - f) * macs["light"])
    assert latency["cascade_matches_router"] == pytest.approx(1.0)
    assert latency["cascade_ms_measured"] > 0 and latency["heavy_ms"] > 0
    for name in ("light", "heavy", "cascade"):
        assert latency[f"{name}_ms_min"] <= latency[f"{name}_ms_max"]
        assert latency[f"{name}_ms_per_image"] * latency["batch_size"] == pytest.approx(
            latency["cascade_ms_measured" if name == "cascade" else f"{name}_ms"])
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["points"][0]["heavy_calls"] == 0 and sweep["points"][-1]["heavy_calls"] == 32
    assert any(p["pareto"] for p in sweep["points"])


def test_eval_human_output(cli, experts, tmp_path):
    router = tmp_path / "router.yaml"
    assert _calibrate(cli, experts, router, "--max-heavy-fraction", "0.5").exit_code == 0
    result = cli("route", "eval", "--router", router, "--data", DATA, "--device", "cpu", "--latency-batches", "0",
                 "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "C_light + f·C_heavy" in result.stdout and "Pareto" in result.stdout
    assert "measured latency" not in result.stdout  # --latency-batches 0: nothing timed, nothing claimed


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_writes_torchscript_equal_to_eager(cli, experts, tmp_path):
    import agfprune

    router = tmp_path / "router.yaml"
    assert _calibrate(cli, experts, router, "--threshold", "0.2").exit_code == 0
    result = cli("route", "export", "--router", router, "--out", tmp_path / "cascade.pt", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["verified"] is True
    scripted = torch.jit.load(str(tmp_path / "cascade.pt"))
    eager = agfprune.load_router(str(router))
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), eager(x), atol=1e-5)


def test_plain_checkpoint_with_model_name(cli, experts, tmp_path):
    torch.manual_seed(3)
    plain = tmp_path / "plain.pth"
    torch.save(create_model("cifar_resnet20").state_dict(), plain)
    result = cli("route", "calibrate", "--light", plain, "--light-model", "cifar_resnet20", "--heavy", experts[1],
                 "--data", DATA, "--out", tmp_path / "r.yaml", "--device", "cpu", "--match-heavy", "-q")
    assert result.exit_code == 0, result.stderr
    assert cli("route", "export", "--router", tmp_path / "r.yaml", "-o", tmp_path / "c.pt").exit_code == 0


@pytest.mark.parametrize("extra, code", [
    ((), 2),  # no objective
    (("--match-heavy", "--threshold", "0.5"), 2),
    (("--tolerance", "1"), 2),
    (("--max-heavy-fraction", "1.5"), 2),
    (("--match-heavy", "--signal", "certainty"), 2),
    (("--match-heavy", "--split-half", "third"), 2),
])
def test_calibrate_usage_errors(cli, experts, tmp_path, extra, code):
    result = _calibrate(cli, experts, tmp_path / "router.yaml", *extra)
    assert_one_line_error(result, code)
    assert not (tmp_path / "router.yaml").exists()


@pytest.mark.parametrize("kwargs, message", [({"num_classes": 5}, "class counts"),
                                             ({"input_size": (3, 40, 40)}, "input sizes")])
def test_incompatible_experts(cli, experts, tmp_path, kwargs, message):
    other = random_checkpoint(tmp_path / "other.safetensors", 5, **kwargs)
    result = _calibrate(cli, (experts[0], other), tmp_path / "router.yaml", "--match-heavy")
    assert_one_line_error(result, 4)
    assert message in result.stderr
    assert not (tmp_path / "router.yaml").exists()


def test_fingerprint_mismatch_on_eval_and_export(cli, experts, tmp_path):
    router = tmp_path / "router.yaml"
    assert _calibrate(cli, experts, router, "--match-heavy").exit_code == 0
    impostor = random_checkpoint(tmp_path / "impostor.safetensors", 9)
    result = cli("route", "eval", "--router", router, "--data", DATA, "--heavy", impostor, "--device", "cpu")
    assert_one_line_error(result, 4)
    assert "fingerprint" in result.stderr and "heavy expert" in result.stderr
    result = cli("route", "export", "--router", router, "--light", impostor, "-o", tmp_path / "c.pt")
    assert_one_line_error(result, 4)
    assert not (tmp_path / "c.pt").exists()


def test_missing_and_bad_router(cli, tmp_path):
    assert_one_line_error(cli("route", "eval", "--router", tmp_path / "none.yaml", "--data", DATA), 4)
    (tmp_path / "bad.yaml").write_text("just: text\n")
    assert_one_line_error(cli("route", "export", "--router", tmp_path / "bad.yaml", "-o", tmp_path / "c.pt"), 4)


@pytest.mark.shared
@needs_shared(RESNET20_JPEG, RESNET56_JPEG, JPEG_VAL)
def test_real_router_on_jpeg_val(cli, tmp_path):
    router = tmp_path / "router.yaml"
    result = cli("route", "calibrate", "--light", RESNET20_JPEG, "--heavy", RESNET56_JPEG, "--data", JPEG_VAL,
                 "--limit", "100", "--match-heavy", "--out", router, "--device", "cpu", "-q", "--json")
    assert result.exit_code == 0, result.stderr
    calibration = json.loads(result.stdout)
    assert calibration["light_top1"] > 70 and calibration["heavy_fraction"] < 1.0
    result = cli("route", "eval", "--router", router, "--data", JPEG_VAL, "--limit", "100", "--device", "cpu",
                 "--latency-batches", "0", "--json", "-q")
    report = json.loads(result.stdout)
    assert report["held_out"] is True and report["router_top1"] >= report["light_top1"] - 2


@pytest.mark.parametrize("args", [("route", "eval", "--data", DATA), ("route", "export", "--out", "c.pt"),
                                  ("route", "calibrate", "--heavy", "h.safetensors", "--match-heavy")])
def test_missing_required_options(cli, args):
    result = cli(*args)
    assert_one_line_error(result, 2)
    assert "missing option" in result.stderr


def test_calibrate_warns_when_the_cascade_costs_more_than_heavy(cli, experts, tmp_path):
    # both experts are resnet20s: any heavy call makes the cascade dearer than heavy alone
    result = cli("route", "calibrate", "--light", experts[0], "--heavy", experts[1], "--data", DATA, "--out",
                 tmp_path / "r.yaml", "--device", "cpu", "--batch-size", "32", "--threshold", "1.01", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["heavy_fraction"] == 1.0 and document["cascade_vs_heavy"] > 1
    assert len(document["warnings"]) == 1 and "routing does not pay" in document["warnings"][0]
    assert "warning: the cascade costs 2.000x the heavy expert" in result.stderr
    never = _calibrate(cli, experts, tmp_path / "r0.yaml", "--threshold", "0", "--json")
    assert json.loads(never.stdout)["warnings"] == []  # heavy never called: cascade == light <= heavy


def test_dynamic_signal_end_to_end_and_not_exportable(cli, experts, tmp_path):
    router = tmp_path / "router.yaml"
    result = _calibrate(cli, experts, router, "--signal", "input-grad", "--max-heavy-fraction", "0.5", "--json")
    assert result.exit_code == 0, result.stderr
    calibration = json.loads(result.stdout)
    assert calibration["signal_extra_macs"] > 0 and calibration["heavy_fraction"] <= 0.5
    result = cli("route", "eval", "--router", router, "--data", DATA, "--device", "cpu", "--batch-size", "16",
                 "--latency-batches", "1", "--latency-repeats", "1", "--bootstrap", "200", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["latency"]["cascade_matches_router"] == pytest.approx(1.0)
    assert report["macs"]["light"] == pytest.approx(report["macs"]["light_forward"] + report["macs"]["signal_extra"])
    assert [row["signal"] for row in report["signals"]] == ["confidence", "entropy", "margin", "input-grad"]
    for row in report["signals"]:
        assert row["error_auroc"] is None or 0 <= row["error_auroc"] <= 1
        assert 0 <= row["match_heavy_fraction"] <= 1 and row["match_heavy_top1"] >= report["heavy_top1"] - 1e-6
    low, high = report["bootstrap"]["heavy_fraction"]
    assert low <= report["heavy_fraction"] <= high
    result = cli("route", "export", "--router", router, "--out", tmp_path / "cascade.pt")
    assert_one_line_error(result, 2)
    assert "input gradients" in result.stderr and "zero-cost signal" in result.stderr
    assert not (tmp_path / "cascade.pt").exists()


def test_eval_signal_table_choice_and_bad_names(cli, experts, tmp_path):
    router = tmp_path / "router.yaml"
    assert _calibrate(cli, experts, router, "--match-heavy").exit_code == 0
    result = cli("route", "eval", "--router", router, "--data", DATA, "--device", "cpu", "--latency-batches", "0",
                 "--signals", "margin", "--bootstrap", "0", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "error AUROC" in result.stdout and "interval" not in result.stdout
    for bad in (("--signals", "margin,certainty"), ("--bootstrap", "-1")):
        assert_one_line_error(cli("route", "eval", "--router", router, "--data", DATA, *bad), 2)


@pytest.mark.parametrize("kwargs, message", [({"num_classes": 5}, "class counts"),
                                             ({"input_size": (3, 40, 40)}, "input sizes")])
def test_eval_refuses_router_whose_experts_disagree(cli, experts, tmp_path, kwargs, message):
    import yaml

    router = tmp_path / "router.yaml"
    assert _calibrate(cli, experts, router, "--match-heavy").exit_code == 0
    other = random_checkpoint(tmp_path / "other.safetensors", 5, **kwargs)
    document = yaml.safe_load(router.read_text())
    document["heavy"].update(checkpoint=str(other), num_classes=kwargs.get("num_classes", 10),
                             input_size=list(kwargs.get("input_size", (3, 32, 32))))
    router.write_text(yaml.safe_dump(document))
    for args in (("eval", "--router", router, "--data", DATA), ("export", "--router", router, "-o", tmp_path / "c.pt")):
        result = cli("route", *args)
        assert_one_line_error(result, 4)
        assert message in result.stderr
