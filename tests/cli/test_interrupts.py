"""Kill tests: SIGINT, SIGTERM and SIGKILL while `calibrate`, `prune` and `finetune` work.

Each run is a real `python -m agfprune` process on synthetic data, signalled once its status line
says the expensive part has started. Guarantees: SIGINT exits 130 and SIGTERM 143 with one
`agfprune: error:` line and no traceback; after any signal the previous output file is byte for
byte intact and the folder holds no partial or temporary file. A SIGKILL *during a write* can
leave a hidden temporary file (never the target name); the next write of that target removes it.
SIGINT and SIGKILL-then-resume of finetune live in tests/core/test_finetune.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, signal_when, start_agfprune
from tests.core.pruned_models import pruned_checkpoint

EXPECTED = {signal.SIGINT: (130, "agfprune: error: interrupted"),
            signal.SIGTERM: (143, "agfprune: error: terminated"),
            signal.SIGKILL: (-signal.SIGKILL, None)}
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM"),
           pytest.param(signal.SIGKILL, id="SIGKILL")]
# enough work that the signal always lands mid-computation (seconds), little enough to start fast
CALIBRATE = ["calibrate", "--model", "cifar_resnet20", "--data", "synthetic:1280", "--calib-batches", "40",
             "--calib-batch-size", "32", "--device", "cpu"]
PRUNE = ["prune", "--model", "cifar_resnet20", "--metric", "agf", "--data", "synthetic:1280", "--calib-batches", "40",
         "--calib-batch-size", "32", "--ratio", "0.5", "--device", "cpu"]


def _interrupt(args: list[str], out: Path, logs: Path, sig: signal.Signals, started) -> str:
    """Run `agfprune ARGS --out OUT`, send `sig` once `started(stderr_text)` holds; check the exit
    code and that there is no traceback; return stderr (see `_check_message`)."""
    log = logs / "stderr.txt"
    with open(log, "w") as stderr:
        process = start_agfprune([*args, "--out", out], stderr=stderr)
        try:
            signal_when(process, lambda: started(log.read_text()), sig, timeout=60)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    code, message = EXPECTED[sig]
    assert process.returncode == code, f"exit {process.returncode}, expected {code}; stderr: {text[-2000:]}"
    assert "Traceback" not in text, text[-2000:]
    return text


def _check_message(text: str, sig: signal.Signals) -> None:
    """SIGINT/SIGTERM end with exactly one `agfprune: error:` line, the last one."""
    message = EXPECTED[sig][1]
    if message is None:
        return
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1] == message and sum(line.startswith("agfprune: error:") for line in lines) == 1, text


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    return out, logs


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_calibrate_interrupted_keeps_the_previous_file(folders, sig) -> None:
    out, logs = folders
    target = out / "calib.safetensors"
    target.write_bytes(b"previous calibration")
    before = _folder_state(out)
    text = _interrupt(CALIBRATE, target, logs, sig, lambda text: "calibrating cifar_resnet20 on 40 batches" in text)
    assert _folder_state(out) == before  # the old file, byte for byte, and nothing else (no temporary)
    _check_message(text, sig)


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_prune_interrupted_keeps_the_previous_file(folders, sig) -> None:
    out, logs = folders
    target = out / "pruned.safetensors"
    target.write_bytes(b"previous pruned checkpoint")
    before = _folder_state(out)
    text = _interrupt(PRUNE, target, logs, sig, lambda text: "calibrating agf on 40 batches" in text)
    assert _folder_state(out) == before
    _check_message(text, sig)


@pytest.mark.slow
def test_finetune_sigterm_exits_143_and_keeps_complete_files(folders, tmp_path) -> None:
    import torch

    out, logs = folders
    tiny = pruned_checkpoint(tmp_path / "tiny.safetensors", ratio=0.75, input_px=8)
    target = out / "ft.safetensors"
    target.write_bytes(b"previous best weights")
    state = out / "ft.state.pt"
    args = ["finetune", str(tiny), "--data", "synthetic:320", "--eval-data", "synthetic:16", "--epochs", "3",
            "--batch-size", "16", "--device", "cpu", "--save-every", "1", "--quiet", "--no-eval-initial"]
    text = _interrupt(args, target, logs, signal.SIGTERM, lambda _text: state.exists())
    _check_message(text, signal.SIGTERM)
    assert target.read_bytes() == b"previous best weights"  # killed within epoch 1: best not rewritten
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    saved = torch.load(state, weights_only=True)  # complete, and resumable
    assert saved["format"] == "agfprune-finetune-state" and saved["epoch"] == 0


@pytest.mark.slow
def test_sigkill_during_a_write_leaves_a_hidden_temporary_that_the_next_write_removes(tmp_path) -> None:
    from agfprune.cli.app import run

    target = tmp_path / "calib.safetensors"
    target.write_bytes(b"previous calibration")
    writer = ("import os, signal, sys\n"
              "from agfprune.core.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'half a calibr')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    process = subprocess.run([sys.executable, "-c", writer, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    assert target.read_bytes() == b"previous calibration"  # never a partial file under the target name
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".calib.safetensors.")]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
    assert leftovers[0].read_bytes() == b"half a calibr"
    # a concurrent writer's temporary (a live process) must survive the cleanup
    live = tmp_path / f".calib.safetensors.{os.getppid()}.abcd1234.tmp"
    live.write_bytes(b"someone else is writing")

    assert run(["calibrate", "--model", "cifar_resnet20", "--data", "synthetic:16", "--calib-batches", "1",
                "--calib-batch-size", "8", "--device", "cpu", "--quiet", "--out", str(target)]) == 0
    assert not leftovers[0].exists() and live.exists()
    from agfprune.core.calibration import load_calibration

    assert load_calibration(target).batches == 1
