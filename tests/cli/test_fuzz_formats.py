"""Property-based fuzzing of every file format agfprune reads (issue 15).

For each format (checkpoint metadata, calibration, scores, finetune state, router, --config) a small
valid file is made once; hypothesis then mutates it (replace, delete or insert a value anywhere in its
structure, or damage its bytes) and runs the command that reads it, in-process. Whatever the mutation,
the run must not exit 1 (an agfprune bug), print a traceback, or take more than a few seconds.

Replacement values mix small random values with boundary ones (huge, negative, NaN, wrong types):
sizes a file may legitimately ask for (a 4096-pixel input) are slow by design and are not what this
looks for. A checkpoint's metadata is re-sealed (its `metadata_fingerprint` recomputed) in half the
cases, as an attacker would, so that the checks behind the seal are reached too.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CliResult
from tests.core.pruned_models import pruned_checkpoint

# AGFPRUNE_FUZZ_EXAMPLES=500 runs a longer, randomised campaign; the suite runs 15 fixed examples per format
CAMPAIGN = int(os.environ.get("AGFPRUNE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=CAMPAIGN or 15, deadline=None, derandomize=not CAMPAIGN, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
SECONDS_PER_RUN = 15.0  # generous for a loaded 2-core machine; a hang would take minutes

BOUNDARY = st.sampled_from([-1, 0, 1, 2, 3, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 30, 1e308, float("inf"),
                            float("-inf"), float("nan"), "", "abc", "0", "1e999", "agfprune-checkpoint",
                            "../../etc/passwd", True, False, None, [], {}, [1, 2, 3], {"a": 1}])
SCALARS = st.one_of(BOUNDARY, st.integers(-100, 100), st.floats(-10, 10), st.text(max_size=6), st.booleans())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=5)


def _paths(document: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """Positions in a nested document (dict keys, the first list items), to mutate one of them."""
    found = [prefix] if prefix else []
    if depth >= 5:
        return found
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, prefix + (key,), depth + 1)
    elif isinstance(document, list):
        for index, value in enumerate(document[:3]):
            found += _paths(value, prefix + (index,), depth + 1)
    return found


@st.composite
def mutated(draw, document: Any, extra_values: st.SearchStrategy | None = None) -> Any:
    """`document` with one to three random mutations (replace / delete / insert a value)."""
    values = VALUES if extra_values is None else st.one_of(VALUES, extra_values)
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "insert"]))
        value = copy.deepcopy(draw(values))  # sampled constants ([], {}) must not be mutated in place
        if action == "replace":
            parent[path[-1]] = value
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = value
        else:
            parent.insert(path[-1], value)
    return document


def _run(cli, *args: Any) -> CliResult:
    started = time.perf_counter()
    result = cli(*args)
    seconds = time.perf_counter() - started
    assert result.exit_code != 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert seconds < SECONDS_PER_RUN, f"{seconds:.1f} s: {args}"
    if result.exit_code != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("agfprune: error:"), result.stderr
    return result


def _damaged_bytes(data: bytes, draw) -> bytes:
    """Truncate, flip bytes in, or append to raw file contents."""
    action = draw(st.sampled_from(["truncate", "flip", "append"]))
    if action == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if action == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        damaged[draw(st.integers(0, len(damaged) - 1))] ^= draw(st.integers(1, 255))
    return bytes(damaged)


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    """One small valid file of every format, all made by agfprune from one 8-pixel pruned ResNet-20."""
    from agfprune.cli.app import run

    root = tmp_path_factory.mktemp("valid")
    model = pruned_checkpoint(root / "model.safetensors", ratio=0.5, input_px=8)
    files = {"model": model, "calib": root / "calib.safetensors", "scores": root / "scores.json",
             "router": root / "router.yaml", "finetuned": root / "ft.safetensors"}
    quiet = ["--device", "cpu", "--quiet"]
    assert run(["calibrate", "--checkpoint", str(model), "--data", "synthetic:16", "--calib-batches", "1",
                "--calib-batch-size", "8", "--img-size", "8", "--out", str(files["calib"]), *quiet]) == 0
    assert run(["score", "--calib", str(files["calib"]), "--metrics", "agf", "--out", str(files["scores"]),
                "--quiet"]) == 0
    assert run(["route", "calibrate", "--light", str(model), "--heavy", str(model), "--data", "synthetic:8",
                "--threshold", "0.5", "--split-half", "none", "--out", str(files["router"]), *quiet]) == 0
    assert run([*FINETUNE, str(model), "--out", str(files["finetuned"]), *quiet]) == 0
    files["state"] = files["finetuned"].with_name("ft.state.pt")
    return files


FINETUNE = ["finetune", "--data", "synthetic:32", "--eval-data", "synthetic:8", "--epochs", "1", "--batch-size", "16",
            "--no-eval-initial"]


def _safetensors_parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        stored, tensors = handle.metadata() or {}, {k: handle.get_tensor(k) for k in handle.keys()}
    decoded = {}
    for key, value in sorted(stored.items()):  # safetensors returns the metadata in hash order
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return tensors, decoded


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], reseal: bool) -> None:
    from safetensors.torch import save_file

    from agfprune.core.fingerprint import metadata_fingerprint

    encoded = {str(k): json.dumps(v) for k, v in metadata.items()}
    if reseal:
        encoded.pop("metadata_fingerprint", None)
        encoded["metadata_fingerprint"] = json.dumps(metadata_fingerprint(encoded))
    save_file(tensors, str(path), metadata=encoded)


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint_metadata(cli, valid, tmp_path_factory, data) -> None:
    tensors, metadata = _safetensors_parts(valid["model"])
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    _save_safetensors(path, tensors, data.draw(mutated(metadata)), reseal=data.draw(st.booleans()))
    _run(cli, "info", path, "--json")


@FUZZ
@given(data=st.data())
def test_fuzz_calibration(cli, valid, tmp_path_factory, data) -> None:
    tensors, metadata = _safetensors_parts(valid["calib"])
    path = tmp_path_factory.mktemp("calib") / "calib.safetensors"
    if data.draw(st.booleans()):
        _save_safetensors(path, tensors, data.draw(mutated(metadata)), reseal=False)
    else:
        path.write_bytes(_damaged_bytes(valid["calib"].read_bytes(), data.draw))
    _run(cli, "score", "--calib", path, "--metric", "agf", "--json", "--quiet")


@FUZZ
@given(data=st.data())
def test_fuzz_scores(cli, valid, tmp_path_factory, data) -> None:
    folder = tmp_path_factory.mktemp("scores")
    path = folder / "scores.json"
    if data.draw(st.booleans()):
        path.write_text(json.dumps(data.draw(mutated(json.loads(valid["scores"].read_text())))))
    else:
        path.write_bytes(_damaged_bytes(valid["scores"].read_bytes(), data.draw))
    _run(cli, "prune", "--checkpoint", valid["model"], "--scores", path, "--ratio", "0.5", "--device", "cpu",
         "--json", "--quiet", "--out", folder / "p.safetensors")


@FUZZ
@given(data=st.data())
def test_fuzz_finetune_state(cli, valid, tmp_path_factory, data) -> None:
    folder = tmp_path_factory.mktemp("state")
    out = folder / "ft.safetensors"
    state = out.with_name("ft.state.pt")
    tensors = st.sampled_from([torch.zeros(3), torch.zeros(0, dtype=torch.uint8), torch.ones(2, 2)])
    if data.draw(st.booleans()):
        torch.save(data.draw(mutated(torch.load(valid["state"], weights_only=True), tensors)), state)
    else:
        state.write_bytes(_damaged_bytes(valid["state"].read_bytes(), data.draw))
    _run(cli, *FINETUNE, valid["model"], "--resume", "--device", "cpu", "--json", "--quiet", "--out", out)


@FUZZ
@given(data=st.data())
def test_fuzz_router(cli, valid, tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("router") / "router.yaml"
    if data.draw(st.booleans()):
        document = data.draw(mutated(yaml.safe_load(valid["router"].read_text())))
        path.write_text(yaml.safe_dump(document))
    else:
        path.write_bytes(_damaged_bytes(valid["router"].read_bytes(), data.draw))
    _run(cli, "route", "eval", "--router", path, "--data", "synthetic:8", "--latency-batches", "0",
         "--random-draws", "1", "--device", "cpu", "--json", "--quiet")


@FUZZ
@given(data=st.data())
def test_fuzz_config(cli, valid, tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    document = {"json": True, "info": {"checkpoint": str(valid["model"])}}
    choice = data.draw(st.sampled_from(["structure", "bytes", "alias"]))
    if choice == "structure":
        path.write_text(yaml.safe_dump(data.draw(mutated(document))))
    elif choice == "bytes":
        path.write_bytes(_damaged_bytes(yaml.safe_dump(document).encode(), data.draw))
    else:  # an anchor and alias somewhere, as a bomb would use them
        path.write_text(f"x: &a [{data.draw(st.text(max_size=5))!r}]\ny: [*a, *a]\n" + yaml.safe_dump(document))
    _run(cli, "info", "--config", path)
