"""Shared fixtures: paths to ../shared, tiny models, a CLI runner that captures output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# One thread: predictable timings, and no OpenMP spin-wait collapse when the other core is busy
# (2 threads on a 2-core machine with one busy core trained 10x slower than 1 thread here).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "models"
SHARED_DATA = SHARED / "data"
JPEG_VAL = SHARED_DATA / "cifar10-jpeg" / "val"
JPEG_TRAIN = SHARED_DATA / "cifar10-jpeg" / "train"
LOSSLESS_NPZ = SHARED_DATA / "cifar10-lossless" / "train4000.npz"
RESNET56_JPEG = SHARED_MODELS / "resnet56-cifar10-jpeg.safetensors"
RESNET20_JPEG = SHARED_MODELS / "resnet20-cifar10-jpeg.safetensors"
RESNET56_TH = SHARED_MODELS / "resnet56-4bfd9763.th"
VIT_JPEG = SHARED_MODELS / "vit-small6-cifar10-jpeg.safetensors"


def needs_shared(*paths: Path):
    """Skip unless the given ../shared paths exist (CI has them beside the checkout)."""
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"missing {', '.join(missing)}")


def default_sigint() -> None:
    """`preexec_fn` for child processes that tests interrupt: give SIGINT back its default disposition.

    A test runner started in the background (`nohup pytest &`, `&` in a non-interactive shell) has SIGINT
    ignored, children inherit that, and Python then installs no KeyboardInterrupt handler; with the
    default restored before exec, the child's Python installs it as in a terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `agfprune ARGS...` in-process; returns exit code and captured stdout/stderr."""
    from agfprune.cli.app import run

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A 64-image, 10-class synthetic .npz (32 px)."""
    from agfprune.core.synthetic import make_synthetic

    images, labels = make_synthetic(64, seed=3)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A tiny ImageFolder tree with train/ and val/ splits, 3 classes × 4 PNG images each."""
    from PIL import Image

    from agfprune.core.synthetic import make_synthetic

    images, labels = make_synthetic(60, seed=5)
    root = tmp_path / "folder"
    for split in ("train", "val"):
        for index, (image, label) in enumerate(zip(images, labels)):
            if label >= 3:
                continue
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")
    return root


def assert_one_line_error(result: CliResult, code: int | None = None) -> None:
    """Non-zero exit, exactly one line on stderr, no traceback."""
    assert result.exit_code != 0, result
    if code is not None:
        assert result.exit_code == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agfprune: error:"), result.stderr
    assert "Traceback" not in result.stderr


def random_model(seed: int = 0, arch: str = "cifar_resnet20", **timm_kwargs):
    """A seeded randomly initialised `arch` in eval mode: the same seed gives the same weights."""
    from agfprune.core.models import create_model

    torch.manual_seed(seed)
    return create_model(arch, **timm_kwargs).eval()


def random_checkpoint(path: Path, seed: int = 0, arch: str = "cifar_resnet20", *, poison: bool = False,
                      input_size: tuple[int, int, int] | None = None, **timm_kwargs) -> Path:
    """Save `random_model(seed, arch, **timm_kwargs)` as an agfprune checkpoint (with the model's data
    config; `input_size` overrides its input size, `poison` fills the stem's weights with NaN)."""
    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.models.factory import resolve_model_data_config

    model = random_model(seed, arch, **timm_kwargs)
    if poison:
        with torch.no_grad():
            model.conv1.weight.fill_(float("nan"))
    config = dict(resolve_model_data_config(model))
    if input_size is not None:
        config["input_size"] = tuple(input_size)
    write_checkpoint(path, model, arch=arch, timm_kwargs=timm_kwargs, data_config=config)
    return path


def start_agfprune(args: list, stderr=subprocess.DEVNULL, text: bool = False) -> subprocess.Popen:
    """`python -m agfprune ARGS` as a child process that a test may signal (one thread, SIGINT live)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "agfprune", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=stderr, text=text, preexec_fn=default_sigint)


def signal_when(process: subprocess.Popen, condition, sig: signal.Signals, timeout: float = 120.0) -> None:
    """Send `sig` to `process` once `condition()` holds; fail (and kill it) if it ends first or times out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before it could be signalled")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError("timed out waiting for the process to start working")
        time.sleep(0.01)
    process.send_signal(sig)


@pytest.fixture(scope="module")
def experts(tmp_path_factory) -> tuple[Path, Path]:
    """Two different random cifar_resnet20 checkpoints: (light, heavy)."""
    folder = tmp_path_factory.mktemp("experts")
    return random_checkpoint(folder / "light.safetensors", 0), random_checkpoint(folder / "heavy.safetensors", 1)
