"""The demo pipeline on synthetic data: train → eval → calibrate → score → prune → finetune
(distilled) → route → export, each step through the same core entry point its command uses.

Request defaults equal the commands' option defaults, so a step here is the command a user would
type with the options written out below.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agfprune.core.progress import SILENT, Progress

DEMO_CALIB_BATCHES, DEMO_BATCH_SIZE = 8, 64


@dataclass
class DemoRequest:
    """Everything `agfprune demo` takes; validated once, before the first file or training minute."""

    out: Path
    model: str = "cifar_resnet20"
    train_images: int = 2500
    val_images: int = 1000
    epochs: int = 5
    ratio: float = 0.75
    finetune_epochs: int = 2
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        from agfprune.core.atomic import check_writable
        from agfprune.core.device import resolve_device
        from agfprune.core.errors import UsageError
        from agfprune.core.pruning import PruneOptions

        PruneOptions(ratio=self.ratio).validate()
        minimum = DEMO_CALIB_BATCHES * DEMO_BATCH_SIZE
        if self.train_images < minimum:
            raise UsageError(f"--train-images {self.train_images}: must be at least {minimum} "
                             f"(calibration uses {DEMO_CALIB_BATCHES} batches of {DEMO_BATCH_SIZE})")
        if self.val_images < 2:
            raise UsageError(f"--val-images {self.val_images}: must be at least 2 (routing calibrates on one half)")
        if self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs}: must be ≥ 1")
        if self.finetune_epochs < 1:
            raise UsageError(f"--finetune-epochs {self.finetune_epochs}: must be ≥ 1")
        resolve_device(self.device)
        check_writable(Path(self.out) / "train.npz")


def export_format_available() -> str:
    """onnx where onnx and onnxruntime are installed, torchscript otherwise."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torchscript"
    return "onnx"


def run_demo(request: DemoRequest, progress: Progress = SILENT) -> list[dict[str, Any]]:
    """The demo pipeline; returns one record per step (step, result, artefact, seconds) and logs each
    as `[demo] step: result (seconds)`. The steps themselves run silently."""
    import numpy as np

    from agfprune.core.atomic import atomic_path
    from agfprune.core.calibration_run import CalibrateRequest, run_calibration
    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.data import LoaderOptions
    from agfprune.core.device import resolve_device, seed_everything
    from agfprune.core.evaluate import EvalRequest, run_eval, speed_wording
    from agfprune.core.export import export_model
    from agfprune.core.finetune import FinetuneConfig, finetune
    from agfprune.core.models import create_model, load_model
    from agfprune.core.pruning import PruneOptions, PruneRequest, run_prune
    from agfprune.core.routing.calibrate import Objective, fit_threshold
    from agfprune.core.routing.experts import ExpertSource
    from agfprune.core.routing.report import evaluate_router
    from agfprune.core.scoring_run import ScoreRequest, run_scoring
    from agfprune.core.synthetic import make_synthetic

    request.validate()
    out, seed, device = Path(request.out), request.seed, request.device
    seed_everything(seed)
    base = create_model(request.model)  # an unknown model name fails here, before anything is written
    loaded = load_model(request.model)
    out.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []

    def record(step: str, result: str, artefact: Path | str, seconds: float) -> None:
        steps.append({"step": step, "result": result, "artefact": str(artefact), "seconds": round(seconds, 2)})
        progress.log(f"[demo] {step}: {result} ({seconds:.1f} s)")

    started = time.perf_counter()
    train, val = out / "train.npz", out / "val.npz"
    for path, count, data_seed in ((train, request.train_images, seed), (val, request.val_images, seed + 1)):
        images, labels = make_synthetic(count, seed=data_seed)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, images=images, labels=labels)
    record("data", f"{request.train_images} train / {request.val_images} val synthetic images, 10 classes", out,
           time.perf_counter() - started)

    init = out / "init.safetensors"
    write_checkpoint(init, base, arch=request.model, timm_kwargs={}, data_config=loaded.data_config)

    dense = out / "dense.safetensors"
    started = time.perf_counter()
    trained = finetune(FinetuneConfig(checkpoint=init, data=str(train), val=str(val), out=dense,
                                      epochs=request.epochs, lr=0.1, warmup_epochs=0.5, batch_size=64,
                                      eval_initial=False, device=device, seed=seed))
    record("train dense", f"val top-1 {trained.best_top1:.2f}%", dense, time.perf_counter() - started)

    def evaluate(checkpoint: Path) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        result = run_eval(EvalRequest(data=str(val), checkpoint=str(checkpoint), latency_repeats=5,
                                      device=device, seed=seed))
        return result, time.perf_counter() - started

    dense_eval, seconds = evaluate(dense)
    record("eval dense", f"top-1 {dense_eval['top1']:.2f}%, {dense_eval['params']:,} params, "
           f"{dense_eval['macs']:,} MACs", dense, seconds)

    calib = out / "calib.safetensors"
    started = time.perf_counter()
    result = run_calibration(CalibrateRequest(data=str(train), out=calib, checkpoint=dense,
                                              batches=DEMO_CALIB_BATCHES, batch_size=DEMO_BATCH_SIZE,
                                              device=device, seed=seed))
    assert result is not None  # the demo runs in one process
    record("calibrate", f"{result['batches']} batches × 64 images, {result['removal_sites']} removal sites", calib,
           time.perf_counter() - started)

    scores = out / "scores.json"
    started = time.perf_counter()
    score_request = ScoreRequest(calib=calib, metric="all", checkpoint=dense, seed=seed)
    score_request.validate()
    _report, result = run_scoring(score_request, scores)
    agreement = result["metrics"].get("magnitude-l1", {}).get("spearman_vs_agf")
    detail = f"; Spearman(agf, magnitude-l1) = {agreement:.2f}" if isinstance(agreement, (int, float)) else ""
    record("score", f"{len(result['metrics'])} metrics scored{detail}", scores, time.perf_counter() - started)

    pruned = out / "pruned.safetensors"
    started = time.perf_counter()
    _pruned, result = run_prune(PruneRequest(out=pruned, options=PruneOptions(ratio=request.ratio), checkpoint=dense,
                                             metric="agf", data=train, calib=calib, device=device, seed=seed,
                                             eval_data=val))
    record("prune (agf)", f"-{100 * (1 - result['params_after'] / result['params_before']):.0f}% params, "
           f"-{100 * (1 - result['macs_after'] / result['macs_before']):.0f}% MACs, "
           f"top-1 {result.get('top1', float('nan')):.2f}% after BN re-estimation", pruned,
           time.perf_counter() - started)

    tuned = out / "pruned-finetuned.safetensors"
    started = time.perf_counter()
    distilled = finetune(FinetuneConfig(checkpoint=pruned, data=str(train), val=str(val), out=tuned,
                                        epochs=request.finetune_epochs, teacher=str(dense), lr=0.02, batch_size=64,
                                        device=device, seed=seed))
    record("finetune (KD)", f"val top-1 {distilled.best_top1:.2f}%", tuned, time.perf_counter() - started)

    result, seconds = evaluate(tuned)
    speedup = (dense_eval["latency_ms"] / result["latency_ms"]
               if dense_eval.get("latency_ms") and result.get("latency_ms") else None)
    speed = f"{speed_wording(speedup)} than dense" if speedup else "not timed"
    record("eval pruned", f"top-1 {result['top1']:.2f}%, {result['params']:,} params, batches {speed}",
           tuned, seconds)

    # routing as `route calibrate`/`route eval` with their default seed 0
    router = out / "router.yaml"
    started = time.perf_counter()
    route_device = resolve_device(device)
    seed_everything(0)
    fit_threshold(ExpertSource(tuned, None), ExpertSource(dense, None), val, "confidence",
                  Objective("match-heavy", 0.5), router, half="first", options=LoaderOptions(),
                  device=route_device, progress=SILENT)
    seed_everything(0)
    report = evaluate_router(router, val, half="second", options=LoaderOptions(), device=route_device)
    record("route", f"router top-1 {report.router_top1:.2f}% vs heavy {report.heavy_top1:.2f}%, "
           f"heavy model on {100 * report.heavy_fraction:.0f}% of inputs", router, time.perf_counter() - started)

    export_format = export_format_available()
    exported = out / ("pruned.onnx" if export_format == "onnx" else "pruned.torchscript.pt")
    started = time.perf_counter()
    checked = export_model(load_model(checkpoint=tuned, device="cpu"), export_format, exported)
    record(f"export ({export_format})", f"max |Δ| vs PyTorch {checked.max_abs_diff:.2e}", exported,
           time.perf_counter() - started)
    return steps
