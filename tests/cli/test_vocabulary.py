"""One vocabulary across commands: checkpoints positional or --checkpoint, one name per concept,
short flags with one meaning, agreeing defaults, --config keys = option names, old spellings as
hidden aliases with a note, and checks that run before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from agfprune.cli.aliases import DEPRECATED
from agfprune.cli.app import app
from tests.conftest import assert_one_line_error


def _commands() -> dict[str, typer.main.click.Command]:
    root = typer.main.get_command(app)
    found = {}
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            for sub, subcommand in command.commands.items():
                found[f"{name} {sub}"] = subcommand
        else:
            found[name] = command
    return found


def _options(command) -> dict[str, object]:
    return {opt: param for param in command.params for opt in getattr(param, "opts", [])}


def test_every_command_reading_a_checkpoint_takes_it_both_ways() -> None:
    readers = [name for name, command in _commands().items() if "--checkpoint" in _options(command)]
    assert sorted(readers) == ["calibrate", "compare", "eval", "export", "finetune", "info", "prune", "score"]
    for name in readers:
        command = _commands()[name]
        assert any(getattr(p, "name", "") == "checkpoint_arg" for p in command.params), name


def test_short_flags_mean_one_thing_everywhere() -> None:
    meaning: dict[str, set[str]] = {}
    for command in _commands().values():
        for param in command.params:
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts if o.startswith("-") and not o.startswith("--")):
                meaning.setdefault(short, set()).add(longs[0])
    assert {short: longs for short, longs in meaning.items() if len(longs) > 1} == {}
    assert meaning["-r"] == {"--ratio"}


def test_one_name_per_concept() -> None:
    names = {opt for command in _commands().values() for opt in _options(command)}
    for gone in ("--batches", "--calib-target", "--bn-recalibrate", "--val", "--val-limit", "--calib-data"):
        assert gone not in names
    calib_loss = [n for n, c in _commands().items() if "--calib-loss" in _options(c)]
    assert sorted(calib_loss) == ["calibrate", "prune"]
    assert "--target" not in _options(_commands()["calibrate"])  # --target counts channels/params/macs


def test_defaults_agree() -> None:
    def default(command: str, option: str):
        return _options(_commands()[command])[option].default

    assert {default(c, "--batch-size") for c in ("eval", "finetune", "compare", "route eval", "route calibrate")} == {128}
    assert default("eval", "--latency-repeats") == default("route eval", "--latency-repeats") == 10
    # the Python entry points behind them agree with the options
    import inspect

    from agfprune.core.evaluate import EvalRequest
    from agfprune.core.routing.report import evaluate_router

    assert EvalRequest(data=None).latency_repeats == EvalRequest(data=None).latency_repeats == 10
    assert EvalRequest(data=None).batch_size == 128
    assert inspect.signature(evaluate_router).parameters["latency_repeats"].default == 10
    assert {default(c, "--amp") for c in ("eval", "finetune", "calibrate")} == {True}
    assert default("calibrate", "--calib-batches") == default("prune", "--calib-batches") == \
        default("compare", "--calib-batches") == 16
    assert default("calibrate", "--calib-batch-size") == default("prune", "--calib-batch-size") == \
        default("compare", "--calib-batch-size") == 64


def test_old_spelling_still_works_with_a_note(cli, tmp_path: Path) -> None:
    result = cli("calibrate", "--model", "cifar_resnet20", "--data", "synthetic:8", "--batches", "0",
                 "--out", tmp_path / "c.safetensors")
    assert_one_line_error(result, 2)  # the old spelling is named in the one error line
    assert "error: --calib-batches 0: must be positive" in result.stderr
    assert "--batches is deprecated, use --calib-batches" in result.stderr
    ok = cli("info", "--model", "cifar_resnet20", "--json", "--config", _write(tmp_path, "info: {}\n"))
    assert ok.exit_code == 0
    renamed = cli("score", "--model", "cifar_resnet20", "--metric", "magnitude-l1", "--json")
    assert renamed.exit_code == 0, renamed.stderr
    assert json.loads(renamed.stdout)["metrics"].keys() == {"magnitude-l1"}
    assert "note: --metric is deprecated, use --metrics (agfprune score)" in renamed.stderr
    # every deprecated spelling maps to an option its command has
    commands = _commands()
    for path, table in DEPRECATED.items():
        for old, new in table.items():
            assert new in _options(commands[" ".join(path)]), (path, old, new)
            assert old not in _options(commands[" ".join(path)]), (path, old)


def _write(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def test_config_keys_are_option_names(cli, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("json: true\ninfo:\n  model: cifar_resnet20\n")
    result = cli("info", "--config", config)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "cifar_resnet20"
    config.write_text("info:\n  json_output: true\n  model: cifar_resnet20\n")
    result = cli("info", "--config", config)
    assert result.exit_code == 0 and json.loads(result.stdout)["model"] == "cifar_resnet20"
    assert "'json_output' is deprecated, use 'json'" in result.stderr
    config.write_text("prune:\n  global: true\n  ratio: 1.5\n")
    result = cli("prune", "--model", "cifar_resnet20", "--out", tmp_path / "p.safetensors", "--config", config)
    assert_one_line_error(result, 2)
    assert "--ratio 1.5" in result.stderr


def test_checkpoint_positional_and_option_conflict(cli, tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    result = cli("info", a, "--checkpoint", b)
    assert_one_line_error(result, 2)
    assert "two checkpoints" in result.stderr


def _forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model creation fails the test: the checks under test must run before loading."""
    import agfprune.core.models.factory as factory

    def never(*_a, **_k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(factory, "create_model", never)


def test_prune_checks_data_before_loading(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_loading(monkeypatch)
    result = cli("prune", "--model", "resnet50", "--data", "synthetic:64", "--ratio", "0.5",
                 "--out", tmp_path / "p.safetensors")
    assert_one_line_error(result, 3)
    assert "--calib-batches 16 × --calib-batch-size 64 needs 1024 images" in result.stderr
    assert "has 64" in result.stderr and "--batches" not in result.stderr.replace("--calib-batches", "")


def test_prune_without_data_defaults_to_magnitude_and_says_bn_is_off(cli, tmp_path: Path) -> None:
    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.models import create_model

    dense = tmp_path / "dense.safetensors"
    write_checkpoint(dense, create_model("cifar_resnet20"), arch="cifar_resnet20", timm_kwargs={},
                     data_config={"input_size": [3, 32, 32]})
    result = cli("prune", dense, "--ratio", "0.5", "--out", tmp_path / "p.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["metric"] == "magnitude-l2" and summary["bn_recalibration_batches"] == 0
    assert any("BatchNorm statistics are not recalibrated" in note for note in summary["notes"])


def test_finetune_validates_on_the_subset_eval_takes(tmp_path: Path) -> None:
    from agfprune.core.data import build_transform, open_dataset, subsample
    from agfprune.core.finetune import FinetuneConfig, _open_data
    from agfprune.core.models.cifar_resnet import CIFAR_DATA_CONFIG

    config = FinetuneConfig(checkpoint=tmp_path / "x.safetensors", data="synthetic:64", val="synthetic:40",
                            out=tmp_path / "o.safetensors", val_limit=16, seed=3)
    _train, val = _open_data(config, dict(CIFAR_DATA_CONFIG), 10)
    evaluated = subsample(open_dataset("synthetic:40", "val", build_transform(dict(CIFAR_DATA_CONFIG))), 16, 3)
    assert list(val.indices) == list(evaluated.indices)


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """A calibration file made at 40 px with mean 0.5 and std 0.25 (not cifar_resnet20's own config)."""
    from agfprune.cli.app import run

    path = tmp_path_factory.mktemp("calib") / "calib.safetensors"
    assert run(["calibrate", "--model", "cifar_resnet20", "--data", "synthetic:16", "--calib-batches", "1",
                "--calib-batch-size", "8", "--img-size", "40", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                "--device", "cpu", "--quiet", "--out", str(path)]) == 0
    return path


def test_prune_takes_the_data_config_of_the_calibration_file(cli, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.safetensors"
    result = cli("prune", "--model", "cifar_resnet20", "--calib", calib, "--ratio", "0.5", "--out", out,
                 "--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["input_size"] == [3, 40, 40]
    result = cli("info", out, "--json")
    config = json.loads(result.stdout)["data_config"]
    assert config["input_size"] == [3, 40, 40] and config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.25] * 3


def test_every_command_that_builds_a_model_takes_img_size_mean_std() -> None:
    builders = {name for name, command in _commands().items()
                if {"--model", "--checkpoint"} & set(_options(command)) or name in ("route calibrate", "route eval")}
    assert builders >= {"prune", "finetune", "info", "route calibrate", "route eval", "compare", "score", "eval",
                        "calibrate", "export"}
    for name in builders - {"demo"}:  # the demo builds its own model for its own synthetic data
        assert {"--img-size", "--mean", "--std"} <= set(_options(_commands()[name])), name


def test_score_takes_the_data_config_of_the_calibration_file_and_the_overrides(cli, calib: Path,
                                                                              tmp_path: Path) -> None:
    scores = tmp_path / "s.json"
    result = cli("score", "--calib", calib, "--metrics", "agf", "--out", scores, "--quiet")
    assert result.exit_code == 0, result.stderr
    model = json.loads(scores.read_text())["model"]
    assert (model["input_size"], model["mean"], model["std"]) == ([3, 40, 40], [0.5] * 3, [0.25] * 3)
    result = cli("score", "--calib", calib, "--metrics", "agf", "--out", scores, "--quiet",
                 "--img-size", "24", "--mean", "0.1,0.2,0.3", "--std", "1,2,3")
    assert result.exit_code == 0, result.stderr
    model = json.loads(scores.read_text())["model"]
    assert (model["input_size"], model["mean"], model["std"]) == ([3, 24, 24], [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    wrong = cli("score", "--model", "cifar_resnet20", "--metrics", "magnitude-l1", "--json", "--mean", "0.5,0.5")
    assert_one_line_error(wrong, 2)
    assert "--mean: expected 3 values, got 2" in wrong.stderr


def test_score_checks_std_before_loading(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_loading(monkeypatch)
    result = cli("score", "--model", "resnet50", "--metrics", "magnitude-l1", "--json", "--std", "0,1,1")
    assert_one_line_error(result, 2)
    assert "--std values must be positive" in result.stderr


def test_export_records_mean_and_std(cli, tmp_path: Path) -> None:
    from tests.conftest import random_checkpoint

    checkpoint = random_checkpoint(tmp_path / "m.safetensors", seed=0, input_size=(3, 16, 16))
    out = tmp_path / "e.safetensors"
    result = cli("export", checkpoint, "--format", "safetensors", "--out", out, "--mean", "0.1,0.2,0.3",
                 "--std", "0.4,0.5,0.6", "--quiet")
    assert result.exit_code == 0, result.stderr
    config = json.loads(cli("info", out, "--json").stdout)["data_config"]
    assert config["mean"] == [0.1, 0.2, 0.3] and config["std"] == [0.4, 0.5, 0.6] and config["input_size"] == [3, 16, 16]


@pytest.fixture(scope="module")
def vit32(tmp_path_factory) -> Path:
    """A random timm ViT built for 32 px inputs, saved dense."""
    import timm
    import torch

    import agfprune

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "vit32.safetensors"
    agfprune.save(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval(), path)
    return path


@pytest.mark.parametrize("command", [
    ["info"], ["eval", "--data", "synthetic:8", "--latency-repeats", "0", "--device", "cpu"],
    ["calibrate", "--data", "synthetic:8", "--calib-batches", "1", "--calib-batch-size", "8", "--device", "cpu",
     "--out", "{tmp}/c.safetensors"],
    ["score", "--metrics", "magnitude-l1", "--json"],
    ["prune", "--ratio", "0.5", "--device", "cpu", "--out", "{tmp}/p.safetensors"],
    ["export", "--format", "safetensors", "--out", "{tmp}/e.safetensors"],
    ["finetune", "--data", "synthetic:8", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
     "--out", "{tmp}/f.safetensors"],
])
def test_img_size_a_vit_cannot_take_is_refused_in_one_line(cli, vit32: Path, tmp_path: Path, command: list[str]) -> None:
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = cli(args[0], vit32, *args[1:], "--img-size", "16")
    assert_one_line_error(result, 2)
    assert "input size 16×16" in result.stderr and "takes 32×32 only" in result.stderr
    assert list(tmp_path.iterdir()) == []
