"""Reliability, round 2 (issue 15): inputs an attacker or a careless user gives, by class.

Hangs (FIFOs, huge labels, YAML alias bombs) end within seconds; outputs that resolve to an input
or to another output are refused before anything is written; malformed agfprune files are exit 4
naming the field; filesystem failures are exit 6 with the previous file intact; a Ctrl-C after the
results were printed still exits 130.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_one_line_error, default_sigint, random_checkpoint

USAGE, DATA, MODEL, OUTPUT = 2, 3, 4, 6
REPO = Path(__file__).resolve().parents[2]


def _files(*roots: Path) -> dict[str, str]:
    """Every file under the roots (hidden ones too) with a content hash; FIFOs by name only."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            elif not path.is_dir():
                found[str(path)] = "special"
    return found


def _refused(cli, code: int, needle: str, *args, roots: tuple[Path, ...] = ()):
    before = _files(*roots)
    started = time.perf_counter()
    result = cli(*args) if args[0] == "info" else cli(*args, "--quiet")
    assert time.perf_counter() - started < 30, "took too long: a hang?"
    assert_one_line_error(result, code)
    assert needle in result.stderr, result.stderr
    assert _files(*roots) == before, "files changed"
    return result


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("models") / "dense.safetensors", 0)


# ---- outputs that resolve to inputs -------------------------------------------------------------------

def test_prune_out_through_a_symlink_to_the_checkpoint_is_refused(cli, model_file, tmp_path):
    checkpoint = tmp_path / "dense.safetensors"
    checkpoint.write_bytes(model_file.read_bytes())
    (tmp_path / "link.safetensors").symlink_to(checkpoint)
    _refused(cli, USAGE, "destroy the input", "prune", "--checkpoint", checkpoint, "--metric", "magnitude-l1",
             "--ratio", "0.5", "--out", tmp_path / "link.safetensors", roots=(tmp_path,))
    _refused(cli, USAGE, "--checkpoint", "prune", "--checkpoint", checkpoint, "--metric", "magnitude-l1",
             "--ratio", "0.5", "--out", tmp_path / "sub" / ".." / "dense.safetensors", roots=(tmp_path,))


def test_calibrate_out_equal_to_checkpoint_is_refused(cli, model_file, tmp_path):
    checkpoint = tmp_path / "dense.safetensors"
    checkpoint.write_bytes(model_file.read_bytes())
    _refused(cli, USAGE, "same file", "calibrate", "--checkpoint", checkpoint, "--data", "synthetic:16",
             "--out", checkpoint, roots=(tmp_path,))


def test_finetune_state_and_log_collisions_are_refused(cli, model_file, tmp_path):
    checkpoint = tmp_path / "dense.safetensors"
    checkpoint.write_bytes(model_file.read_bytes())
    out = tmp_path / "ft.safetensors"
    _refused(cli, USAGE, "--state", "finetune", checkpoint, "--data", "synthetic:16", "--state", checkpoint,
             "--out", out, roots=(tmp_path,))
    _refused(cli, USAGE, "overwrite the other output", "finetune", checkpoint, "--data", "synthetic:16",
             "--log", out, "--out", out, roots=(tmp_path,))


def test_route_calibrate_out_equal_to_light_is_refused(cli, experts, tmp_path):
    light = tmp_path / "light.safetensors"
    light.write_bytes(experts[0].read_bytes())
    _refused(cli, USAGE, "--light", "route", "calibrate", "--light", light, "--heavy", experts[1], "--data",
             "synthetic:8", "--threshold", "0.5", "--out", light, roots=(tmp_path,))


def test_hard_link_to_the_input_is_the_same_file(tmp_path):
    from agfprune.core.atomic import check_outputs
    from agfprune.core.errors import UsageError

    source = tmp_path / "a.safetensors"
    source.write_bytes(b"x")
    os.link(source, tmp_path / "b.safetensors")
    with pytest.raises(UsageError, match="same file"):
        check_outputs({"--out": tmp_path / "b.safetensors"}, {"--checkpoint": source})
    check_outputs({"--out": tmp_path / "c.safetensors"}, {"--checkpoint": source, "--data": "synthetic:8"})


# ---- hangs -------------------------------------------------------------------------------------------

def test_a_fifo_checkpoint_or_config_is_refused_without_opening_it(cli, tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    _refused(cli, MODEL, "not a regular file", "info", fifo)
    config = tmp_path / "config.yaml"
    os.mkfifo(config)
    _refused(cli, USAGE, "not a regular file", "eval", "--config", config)


def test_a_yaml_alias_bomb_config_is_refused_quickly(cli, tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 10^10 nodes once expanded, 600 bytes
    _refused(cli, USAGE, "aliases", "eval", "--config", bomb, "--data", "synthetic:8")


# ---- malformed agfprune files: exit 4 naming the field -----------------------------------------------

@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, model_file) -> dict[str, Path]:
    from agfprune.cli.app import run

    root = tmp_path_factory.mktemp("artefacts")
    calib, scores = root / "calib.safetensors", root / "scores.json"
    assert run(["calibrate", "--checkpoint", str(model_file), "--data", "synthetic:16", "--calib-batches", "1",
                "--calib-batch-size", "8", "--device", "cpu", "--quiet", "--out", str(calib)]) == 0
    assert run(["score", "--calib", str(calib), "--metrics", "agf", "--quiet", "--out", str(scores)]) == 0
    return {"calib": calib, "scores": scores, "model": model_file}


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(version="abc"), "field 'version'"),
    (lambda d: d.update(metrics=[1, 2]), "field 'metrics'"),
    (lambda d: d["metrics"]["agf"]["groups"][0].update(scores="high"), "groups[0].scores"),
    (lambda d: d["metrics"]["agf"]["groups"][0].update(scores=[10 ** 400]), "groups[0].scores"),
    (lambda d: d["metrics"]["agf"]["groups"][1].pop("key"), "groups[1].key"),
])
def test_malformed_scores_name_the_field(cli, artefacts, tmp_path, edit, field):
    document = json.loads(artefacts["scores"].read_text())
    edit(document)
    bad = tmp_path / "scores.json"
    bad.write_text(json.dumps(document))
    _refused(cli, MODEL, field, "prune", "--checkpoint", artefacts["model"], "--scores", bad, "--ratio", "0.5",
             "--out", tmp_path / "p.safetensors", roots=(tmp_path,))


@pytest.mark.parametrize("key, value, field", [
    ("counts", '{"out": {"conv1": -3}}', "counts.out.conv1"),
    ("counts", '{"out": {"conv1": "many"}}', "counts.out.conv1"),
    ("counts", '[1]', "field 'counts'"),
    ("counts", '{"out": {"con\\nv1": -3}}', "counts.out.con\\nv1"),  # a newline in a key: still one line
    ("format_version", '"abc"', "field 'format_version'"),
    ("input_size", "[3, 100000, 100000]", "field 'input_size'"),
    ("timm_kwargs", '{"checkpoint_path": "/etc/passwd"}', "checkpoint_path"),
])
def test_malformed_calibration_names_the_field(cli, artefacts, tmp_path, key, value, field):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(artefacts["calib"]), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    bad = tmp_path / "calib.safetensors"
    save_file(tensors, str(bad), metadata={**metadata, key: value})
    _refused(cli, MODEL, field, "score", "--calib", bad, "--metric", "agf", "--out", tmp_path / "s.json",
             roots=(tmp_path,))


def test_finetune_state_missing_keys_names_the_field(cli, model_file, tmp_path):
    out = tmp_path / "ft.safetensors"
    args = ["finetune", model_file, "--data", "synthetic:32", "--eval-data", "synthetic:8", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--no-eval-initial", "--out", out]
    assert cli(*args, "--quiet").exit_code == 0
    state_path = out.with_name("ft.state.pt")
    state = torch.load(state_path, weights_only=True)
    for key, value, field in (("optimizer", None, "field 'optimizer'"), ("records", "[1", "field 'records'"),
                              ("epoch", -1, "field 'epoch'"), ("rng", {"python": []}, "rng.numpy")):
        damaged = dict(state)
        if value is None:
            damaged.pop(key)
        else:
            damaged[key] = value
        torch.save(damaged, state_path)
        _refused(cli, MODEL, field, *args, "--resume", roots=(tmp_path,))


def test_router_with_an_infinite_threshold_is_never_written(cli, experts, tmp_path):
    _refused(cli, USAGE, "--threshold", "route", "calibrate", "--light", experts[0], "--heavy", experts[1],
             "--data", "synthetic:8", "--threshold", "inf", "--out", tmp_path / "r.yaml", roots=(tmp_path,))


# ---- filesystem failures: exit 6, previous file intact -----------------------------------------------

def test_a_file_name_too_long_is_exit_6(cli, model_file, tmp_path):
    _refused(cli, OUTPUT, "longer than the filesystem allows", "calibrate", "--checkpoint", model_file,
             "--data", "synthetic:16", "--out", tmp_path / ("c" * 300 + ".safetensors"), roots=(tmp_path,))


def test_a_name_that_barely_fits_still_gets_a_temporary_file(tmp_path):
    from agfprune.core.atomic import write_text_atomic

    target = tmp_path / ("n" * 250 + ".yaml")  # 255 bytes: `.NAME.PID.XXXXXXXX.tmp` would not fit
    write_text_atomic(target, "ok")
    assert target.read_text() == "ok" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_disk_full_while_writing_is_exit_6_and_keeps_the_previous_file(model_file, tmp_path):
    """RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG, the way a full disk fails writes."""
    target = tmp_path / "calib.safetensors"
    target.write_bytes(b"previous calibration")
    limit = ("import resource, signal, sys\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
             "from agfprune.cli.app import main\n"
             "sys.argv[0] = 'agfprune'\n"
             "main()\n")
    done = subprocess.run([sys.executable, "-c", limit, "calibrate", "--checkpoint", str(model_file), "--data",
                           "synthetic:16", "--calib-batches", "1", "--calib-batch-size", "8", "--device", "cpu", "--quiet",
                           "--out", str(target)], env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == OUTPUT, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "cannot write" in done.stderr, done.stderr
    assert target.read_bytes() == b"previous calibration"
    assert [p.name for p in tmp_path.iterdir()] == ["calib.safetensors"]


# ---- Ctrl-C after the results ------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["after-run", "swallowed"])
def test_sigint_after_the_results_still_exits_130(model_file, when):
    """The command prints its result, then Ctrl-C arrives (after run() returned, or inside a library
    that swallowed it): the exit code is 130 either way, with one `interrupted` line."""
    script = ("import os, signal, sys, time\n"
              "from agfprune.cli import app\n"
              "real_run = app.run\n"
              "def run(argv=None):\n"
              "    code = real_run(argv)\n"
              "    if sys.argv[1] == 'swallowed':\n"
              "        try:\n"
              "            os.kill(os.getpid(), signal.SIGINT); time.sleep(1)\n"
              "        except KeyboardInterrupt:\n"
              "            pass\n"
              "    else:\n"
              "        os.kill(os.getpid(), signal.SIGINT); time.sleep(1)\n"
              "    return code\n"
              "app.run = run\n"
              "sys.argv = ['agfprune', 'info', sys.argv[2], '--json']\n"
              "app.main()\n")
    done = subprocess.run([sys.executable, "-c", script, when, str(model_file)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, preexec_fn=default_sigint)
    assert json.loads(done.stdout)["model"] == "cifar_resnet20"  # the results were printed
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["agfprune: error: interrupted"]


def test_sigint_ignored_by_the_parent_stays_ignored(model_file):
    """Started with SIGINT ignored (a background job, nohup), agfprune does not install a handler."""
    script = ("import signal, sys\n"
              "from agfprune.cli import app\n"
              "app._InterruptWatch()\n"
              "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.stdout.strip() == "True", done.stderr


def test_npz_labels_are_checked_before_classes_are_built(cli, model_file, tmp_path):
    for name, labels in (("huge", np.full(4, 2 ** 62, dtype=np.int64)),
                         ("uint64", np.full(4, 2 ** 63, dtype=np.uint64))):
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=np.zeros((4, 32, 32, 3), dtype=np.uint8), labels=labels)
        _refused(cli, DATA, "labels", "eval", model_file, "--data", path)


# ---- images ------------------------------------------------------------------------------------------

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels, with no pixel data (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


BAD_IMAGES = {
    "zero-bytes": lambda path: path.write_bytes(b""),
    "truncated": lambda path: path.write_bytes(path.with_name("0.png").read_bytes()[:60]),
    "not-an-image": lambda path: path.write_text("hello, I am text"),
    "dangling-symlink": lambda path: path.symlink_to(path.with_name("missing.png")),
    "fifo": lambda path: os.mkfifo(path),
    "decompression-bomb": lambda path: path.write_bytes(_png_header_only(30000, 30000)),
}


def _image_folder(root: Path, count: int = 6) -> Path:
    from PIL import Image

    folder = root / "val" / "cat"
    folder.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (32, 32), (index * 40, 0, 0)).save(folder / f"{index}.png")
    return folder


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_an_unreadable_image_is_exit_3_naming_it_or_skipped_and_counted(cli, model_file, tmp_path, kind):
    folder = _image_folder(tmp_path / "data")
    bad = folder / "bad.png"
    BAD_IMAGES[kind](bad)
    _refused(cli, DATA, "bad.png", "eval", model_file, "--data", tmp_path / "data", "--latency-repeats", "0",
             roots=(tmp_path,))
    result = cli("eval", model_file, "--data", tmp_path / "data", "--skip-bad-images", "--latency-repeats", "0",
                 "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["samples"], document["skipped_images"]) == (6, 1)


def test_a_bad_image_read_by_a_worker_process_is_still_one_line(cli, model_file, tmp_path):
    folder = _image_folder(tmp_path / "data")
    (folder / "bad.png").write_bytes(b"")
    _refused(cli, DATA, "bad.png", "eval", model_file, "--data", tmp_path / "data", "--workers", "1",
             "--latency-repeats", "0", roots=(tmp_path,))


def test_a_symlink_loop_in_an_image_folder_is_followed_once(cli, model_file, tmp_path):
    folder = _image_folder(tmp_path / "data")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "up").symlink_to(folder.parent, target_is_directory=True)
    result = cli("eval", model_file, "--data", tmp_path / "data", "--latency-repeats", "0", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 6


def test_round_to_wider_than_every_group_is_refused(cli, model_file, tmp_path):
    _refused(cli, USAGE, "--round-to", "prune", "--checkpoint", model_file, "--metric", "magnitude-l1",
             "--ratio", "0.5", "--round-to", "64", "--device", "cpu", "--out", tmp_path / "p.safetensors",
             roots=(tmp_path,))


def test_non_utf8_file_names_are_read_and_written_exactly(cli, model_file, tmp_path):
    folder = os.fsencode(tmp_path)
    source = os.fsdecode(folder + b"/m\xe9.safetensors")
    Path(source).write_bytes(model_file.read_bytes())
    calib, scores = os.fsdecode(folder + b"/c\xe9.safetensors"), os.fsdecode(folder + b"/s\xe9.json")
    pruned = os.fsdecode(folder + b"/p\xe9.safetensors")
    assert cli("calibrate", "--checkpoint", source, "--data", "synthetic:16", "--calib-batches", "1", "--calib-batch-size", "8",
               "--device", "cpu", "--quiet", "--out", calib).exit_code == 0
    assert cli("score", "--calib", calib, "--out", scores, "--json").exit_code == 0
    assert cli("prune", "--checkpoint", source, "--scores", scores, "--ratio", "0.5", "--device", "cpu", "--json",
               "--out", pruned).exit_code == 0
    assert sorted(os.listdir(folder)) == sorted([b"m\xe9.safetensors", b"c\xe9.safetensors", b"s\xe9.json",
                                                 b"p\xe9.safetensors"])
    result = cli("info", pruned, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["pruned"], result.stderr
