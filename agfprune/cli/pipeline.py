"""Run agfprune commands in-process and collect their --json results (used by the demo)."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

from agfprune.core.errors import AgfpruneError


class StepFailed(AgfpruneError):
    """A pipeline step exited non-zero; its own error line has already been printed."""

    def __init__(self, step: str, code: int) -> None:
        super().__init__(f"demo step {step!r} failed (exit code {code}); see the message above")
        self.exit_code = code


def run_step(name: str, args: list[Any]) -> tuple[dict[str, Any], float]:
    """`agfprune ARGS --json --quiet` in-process; returns the parsed JSON and the seconds taken."""
    from agfprune.cli.app import run

    buffer = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = run([*(str(a) for a in args), "--json", "--quiet"])
    if code != 0:
        raise StepFailed(name, code)
    return json.loads(buffer.getvalue() or "{}"), time.perf_counter() - started


def _export_format() -> str:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torchscript"
    return "onnx"


DEMO_CALIB_BATCHES, DEMO_BATCH_SIZE = 8, 64


def _validate_demo(out: Path, *, train_images: int, val_images: int, epochs: int, ratio: float,
                   finetune_epochs: int, device: str) -> None:
    """Check every option before the first file is written or the first minute of training is spent."""
    from agfprune.core.atomic import check_writable
    from agfprune.core.device import resolve_device
    from agfprune.core.errors import UsageError
    from agfprune.core.pruning import PruneOptions

    PruneOptions(ratio=ratio).validate()
    minimum = DEMO_CALIB_BATCHES * DEMO_BATCH_SIZE
    if train_images < minimum:
        raise UsageError(f"--train-images {train_images}: must be at least {minimum} "
                         f"(calibration uses {DEMO_CALIB_BATCHES} batches of {DEMO_BATCH_SIZE})")
    if val_images < 2:
        raise UsageError(f"--val-images {val_images}: must be at least 2 (routing calibrates on one half)")
    if epochs < 1:
        raise UsageError(f"--epochs {epochs}: must be ≥ 1")
    if finetune_epochs < 1:
        raise UsageError(f"--finetune-epochs {finetune_epochs}: must be ≥ 1")
    resolve_device(device)
    check_writable(out / "train.npz")


def run_demo(out: Path, *, model: str, train_images: int, val_images: int, epochs: int, ratio: float,
             finetune_epochs: int, device: str, seed: int, quiet: bool) -> list[dict[str, Any]]:
    """The demo pipeline; returns one record per step (step, result, artefact, seconds)."""
    import numpy as np

    from agfprune.cli.output import stderr
    from agfprune.core.atomic import atomic_path
    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.device import seed_everything
    from agfprune.core.models import create_model, load_model
    from agfprune.core.synthetic import make_synthetic

    _validate_demo(out, train_images=train_images, val_images=val_images, epochs=epochs, ratio=ratio,
                   finetune_epochs=finetune_epochs, device=device)
    seed_everything(seed)
    base = create_model(model)  # an unknown model name fails here, before anything is written
    loaded = load_model(model)
    out.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    common = ["--device", device, "--seed", str(seed)]

    def record(step: str, result: str, artefact: Path | str, seconds: float) -> None:
        steps.append({"step": step, "result": result, "artefact": str(artefact), "seconds": round(seconds, 2)})
        if not quiet:
            stderr.print(f"[demo] {step}: {result} ({seconds:.1f} s)", highlight=False, markup=False)

    started = time.perf_counter()
    train, val = out / "train.npz", out / "val.npz"
    for path, count, data_seed in ((train, train_images, seed), (val, val_images, seed + 1)):
        images, labels = make_synthetic(count, seed=data_seed)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, images=images, labels=labels)
    record("data", f"{train_images} train / {val_images} val synthetic images, 10 classes", out,
           time.perf_counter() - started)

    init = out / "init.safetensors"
    write_checkpoint(init, base, arch=model, timm_kwargs={}, data_config=loaded.data_config)

    dense = out / "dense.safetensors"
    result, seconds = run_step("train", ["finetune", init, "--data", train, "--eval-data", val, "--epochs", epochs,
                                         "--lr", "0.1", "--warmup-epochs", "0.5", "--batch-size", "64",
                                         "--no-eval-initial", "--out", dense, *common])
    record("train dense", f"val top-1 {result['best_top1']:.2f}%", dense, seconds)

    result, seconds = run_step("eval", ["eval", dense, "--data", val, "--latency-repeats", "5", *common])
    dense_eval = result
    record("eval dense", f"top-1 {result['top1']:.2f}%, {result['params']:,} params, {result['macs']:,} MACs",
           dense, seconds)

    calib = out / "calib.safetensors"
    result, seconds = run_step("calibrate", ["calibrate", "--checkpoint", dense, "--data", train, "--calib-batches",
                                             DEMO_CALIB_BATCHES, "--calib-batch-size", DEMO_BATCH_SIZE, "--out", calib,
                                             *common])
    record("calibrate", f"{result['batches']} batches × 64 images, {result['removal_sites']} removal sites", calib, seconds)

    scores = out / "scores.json"
    result, seconds = run_step("score", ["score", "--calib", calib, "--checkpoint", dense, "--metrics", "all",
                                         "--out", scores, "--seed", str(seed)])
    agreement = result["metrics"].get("magnitude-l1", {}).get("spearman_vs_agf")
    detail = f"; Spearman(agf, magnitude-l1) = {agreement:.2f}" if isinstance(agreement, (int, float)) else ""
    record("score", f"{len(result['metrics'])} metrics scored{detail}", scores, seconds)

    pruned = out / "pruned.safetensors"
    result, seconds = run_step("prune", ["prune", "--checkpoint", dense, "--calib", calib, "--metric", "agf",
                                         "--data", train, "--ratio", ratio, "--eval-data", val, "--out", pruned,
                                         *common])
    record("prune (agf)", f"-{100 * (1 - result['params_after'] / result['params_before']):.0f}% params, "
           f"-{100 * (1 - result['macs_after'] / result['macs_before']):.0f}% MACs, "
           f"top-1 {result.get('top1', float('nan')):.2f}% after BN recalibration", pruned, seconds)

    tuned = out / "pruned-finetuned.safetensors"
    result, seconds = run_step("finetune", ["finetune", pruned, "--data", train, "--eval-data", val, "--epochs",
                                            finetune_epochs, "--teacher", dense, "--lr", "0.02",
                                            "--batch-size", "64", "--out", tuned, *common])
    record("finetune (KD)", f"val top-1 {result['best_top1']:.2f}%", tuned, seconds)

    result, seconds = run_step("eval", ["eval", tuned, "--data", val, "--latency-repeats", "5", *common])
    from agfprune.core.evaluate import speed_wording

    speedup = (dense_eval["latency_ms"] / result["latency_ms"]
               if dense_eval.get("latency_ms") and result.get("latency_ms") else None)
    speed = f"{speed_wording(speedup)} than dense" if speedup else "not timed"
    record("eval pruned", f"top-1 {result['top1']:.2f}%, {result['params']:,} params, batches {speed}",
           tuned, seconds)

    router = out / "router.yaml"
    result, seconds = run_step("route calibrate", ["route", "calibrate", "--light", tuned, "--heavy", dense,
                                                   "--data", val, "--signal", "confidence", "--match-heavy",
                                                   "--tolerance", "0.5", "--split-half", "first",
                                                   "--out", router, "--device", device])
    result, more = run_step("route eval", ["route", "eval", "--router", router, "--data", val,
                                           "--split-half", "second", "--device", device])
    record("route", f"router top-1 {result['router_top1']:.2f}% vs heavy {result['heavy_top1']:.2f}%, "
           f"heavy model on {100 * result['heavy_fraction']:.0f}% of inputs", router, seconds + more)

    export_format = _export_format()
    exported = out / ("pruned.onnx" if export_format == "onnx" else "pruned.torchscript.pt")
    result, seconds = run_step("export", ["export", tuned, "--format", export_format, "--out", exported])
    record(f"export ({export_format})", f"max |Δ| vs PyTorch {result['max_abs_diff']:.2e}", exported, seconds)
    return steps
