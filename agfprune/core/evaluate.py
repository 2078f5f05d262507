"""Accuracy, loss, size and speed of a model on a data set."""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from agfprune.core.device import autocast
from agfprune.core.errors import DataError
from agfprune.core.model_source import ModelSource
from agfprune.core.progress import SILENT, Progress


@dataclass
class Accuracy:
    """Top-1/top-5 (percent) and mean cross-entropy over `samples` images."""

    top1: float
    top5: float
    loss: float
    samples: int


@dataclass
class ModelCost:
    """Parameter count and multiply-accumulates for one input."""

    params: int
    macs: int


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DataError(f"the data has label {int(labels.max())} but the model predicts only "
                        f"{num_classes} classes")


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
                   progress: Progress = SILENT, description: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, CPU) and labels of a loader, in loader order."""
    model.eval()
    logits_all, labels_all = [], []
    for images, labels in progress.track(loader, total=len(loader), description=description):
        with autocast(device, amp):
            logits = model(images.to(device, non_blocking=True))
        logits_all.append(logits.float().cpu())
        labels_all.append(labels)
    return torch.cat(logits_all), torch.cat(labels_all)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    """Top-1/top-5 (timm's `accuracy`; top-k = all classes when there are fewer than 5) and loss."""
    from timm.utils import accuracy

    _check_labels(labels, logits.shape[1])
    samples = len(labels)
    if samples == 0:
        return Accuracy(top1=0.0, top5=0.0, loss=float("nan"), samples=0)
    top1, top5 = accuracy(logits, labels, topk=(1, min(5, logits.shape[1])))
    loss = F.cross_entropy(logits, labels).item()
    return Accuracy(top1=top1.item(), top5=top5.item(), loss=loss if math.isfinite(loss) else float("nan"),
                    samples=samples)


def evaluate_accuracy(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
                      progress: Progress = SILENT) -> Accuracy:
    """Top-1, top-5 and mean loss of `model` over `loader`."""
    logits, labels = predict_logits(model, loader, device, amp, progress, "evaluate")
    return accuracy_from_logits(logits, labels)


def _op_counter() -> Any:
    """torch-pruning's op counter, without importing timm when this process has not.

    The counter imports timm only to add hooks for timm's attention classes, and a process that
    never imported timm holds no timm model; importing it anyway would double `agfprune info`'s
    start-up. Once timm is loaded, its attention hooks are added as torch-pruning itself does.
    """
    if "torch_pruning" not in sys.modules and "timm" not in sys.modules:
        sys.modules["timm"] = None  # type: ignore[assignment]  # makes `import timm` fail fast
        try:
            import torch_pruning  # noqa: F401
        finally:
            del sys.modules["timm"]
    from torch_pruning.utils import op_counter

    if "timm" in sys.modules and not op_counter.has_timm:
        import timm

        for attention in (timm.models.vision_transformer.Attention, timm.models.swin_transformer.WindowAttention):
            op_counter.MODULES_MAPPING.setdefault(attention, op_counter.timm_multihead_attention_counter_hook)
        op_counter.has_timm = True
    return op_counter


def count_cost(model: nn.Module, input_size: tuple[int, ...], device: torch.device | str = "cpu") -> ModelCost:
    """Parameters and MACs for one image, counted by torch-pruning's op counter.

    The counting forward runs on one intra-op thread: a single image gains nothing from more, and
    on a busy machine OpenMP threads spinning on cores that other processes hold made it 10-30x
    slower (ResNet-56: 0.13 s on one thread, 1.4-4 s on two at load 4.6; most of `agfprune info`)."""
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_size, device=device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        macs, params = _op_counter().count_ops_and_params(model, example)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return ModelCost(params=int(params), macs=int(macs))


@dataclass
class Latency:
    """Wall time of one forward pass over `repeats` timed runs (after warm-up), in milliseconds."""

    batch_size: int
    repeats: int
    median_ms: float
    min_ms: float
    max_ms: float

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch_size

    @classmethod
    def of(cls, timings_ms: list[float], batch_size: int) -> "Latency":
        """The summary of per-batch timings (ms) of `batch_size` images each."""
        return cls(batch_size=batch_size, repeats=len(timings_ms), median_ms=statistics.median(timings_ms),
                   min_ms=min(timings_ms), max_ms=max(timings_ms))

    def as_dict(self, prefix: str = "latency") -> dict[str, float | int]:
        """JSON fields: median per batch (`latency_ms`, as before), per image, and the spread."""
        return {f"{prefix}_ms": round(self.median_ms, 3), f"{prefix}_ms_per_image": round(self.per_image_ms, 4),
                f"{prefix}_ms_min": round(self.min_ms, 3), f"{prefix}_ms_max": round(self.max_ms, 3),
                f"{prefix}_repeats": self.repeats}

    def describe(self) -> str:
        return (f"{self.median_ms:.2f} ms/batch of {self.batch_size} (min {self.min_ms:.2f}, max {self.max_ms:.2f} "
                f"over {self.repeats} repeats), {self.per_image_ms:.3f} ms/image")


LATENCY_FIELDS = ("latency_ms", "latency_ms_per_image", "latency_ms_min", "latency_ms_max", "latency_repeats")


@torch.no_grad()
def time_forward_passes(models: list[tuple[nn.Module, torch.device, bool]], input_sizes: list[tuple[int, ...]],
                        batch_size: int, warmup: int = 3, repeats: int = 10) -> list[Latency]:
    """Wall time of one forward pass on a batch for each (model, device, amp), after warm-up runs:
    median and spread over `repeats`. Rounds are interleaved (each model once per round), so that
    load changes on a shared machine hit every model alike and their ratio stays meaningful."""
    batches = [torch.randn(batch_size, *size, device=device) for (_, device, _), size in zip(models, input_sizes)]
    for model, _, _ in models:
        model.eval()
    timings: list[list[float]] = [[] for _ in models]
    for step in range(warmup + repeats):
        for index, ((model, device, amp), batch) in enumerate(zip(models, batches)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with autocast(device, amp):
                model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if step >= warmup:
                timings[index].append(elapsed_ms)
    return [Latency.of(values, batch_size) for values in timings]


def measure_latencies(models: list[tuple[nn.Module, torch.device, bool]], input_sizes: list[tuple[int, ...]],
                      batch_size: int, warmup: int = 3, repeats: int = 10) -> list[float]:
    """Median wall time (ms) of one forward pass on a batch for each model, timed interleaved
    (see `time_forward_passes`)."""
    return [latency.median_ms for latency in time_forward_passes(models, input_sizes, batch_size, warmup, repeats)]


def measure_latency(model: nn.Module, input_size: tuple[int, ...], batch_size: int, device: torch.device,
                    warmup: int = 3, repeats: int = 10, amp: bool = True) -> float:
    """Median wall time (ms) of one forward pass on a batch, after warm-up runs."""
    return measure_latencies([(model, device, amp)], [input_size], batch_size, warmup, repeats)[0]


# ---- the eval command ----------------------------------------------------------------------------

RUNTIMES = ("pytorch", "onnxruntime")


@dataclass
class EvalRequest(ModelSource):
    """Everything `agfprune eval` needs (the model's fields: ModelSource); validated once, before any
    model or data is loaded."""

    data: str | None
    compare_to: str | None = None
    batch_size: int = 128
    workers: int = 0
    limit: int | None = None
    latency_repeats: int = 10
    threads: int = 0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    skip_bad_images: bool = False

    def validate(self) -> torch.device:
        """UsageError on bad options; returns the device to run on."""
        from agfprune.core.device import resolve_device
        from agfprune.core.errors import UsageError
        from agfprune.core.onnx_model import is_onnx, require_onnxruntime

        if self.data is None:
            raise UsageError("missing option --data")
        if self.latency_repeats < 0:
            raise UsageError(f"--latency-repeats {self.latency_repeats}: must be ≥ 0 (0 skips the latency measurement)")
        if self.threads < 0:
            raise UsageError(f"--threads {self.threads}: must be ≥ 0 (0: the runtime's default)")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size {self.batch_size}: must be positive")
        if is_onnx(self.checkpoint) or is_onnx(self.compare_to):
            require_onnxruntime()
        if is_onnx(self.checkpoint) and (self.model or self.pretrained):
            raise UsageError("an .onnx file carries its own graph: drop --model/--pretrained")
        self.validate_source()
        return resolve_device(self.device)


@dataclass
class _Evaluated:
    loaded: object
    runtime: str
    device: torch.device
    data_config: dict
    accuracy: Accuracy | None = None
    cost: ModelCost | None = None
    skipped: int = 0  # unreadable images left out (--skip-bad-images)


def _load_for_eval(request: EvalRequest, model: str | None, checkpoint: str | None, pretrained: bool,
                   device: torch.device) -> _Evaluated:
    from agfprune.core.models import load_model
    from agfprune.core.onnx_model import is_onnx, load_onnx_model

    if is_onnx(checkpoint):
        loaded = load_onnx_model(checkpoint, request.threads, device)  # type: ignore[arg-type]
        runtime, tensor_device = "onnxruntime", torch.device("cpu")
        recorded = loaded.metadata
        cost = (ModelCost(params=int(recorded["params"]), macs=int(recorded["macs"]))
                if isinstance(recorded.get("params"), int) and isinstance(recorded.get("macs"), int) else None)
    else:
        loaded = load_model(model, checkpoint, pretrained=pretrained, device=device)
        runtime, tensor_device, cost = "pytorch", device, None
    config = request.source_data_config(loaded.data_config)
    if runtime == "pytorch":
        loaded.check_input_size(config)  # type: ignore[attr-defined]
    return _Evaluated(loaded, runtime, tensor_device, config, cost=cost)


def describe_latency(report: dict) -> str:
    """One line for an eval report's latency fields: per batch with the spread, and per image."""
    if report.get("latency_ms") is None:
        return "not timed (--latency-repeats 0)"
    return Latency(batch_size=report["batch_size"], repeats=report["latency_repeats"],
                   median_ms=report["latency_ms"], min_ms=report["latency_ms_min"],
                   max_ms=report["latency_ms_max"]).describe()


def speed_wording(speedup: float) -> str:
    if speedup >= 1.0:
        return f"{speedup:.2f}× faster"
    return f"{1.0 / speedup:.2f}× slower"


def run_eval(request: EvalRequest, progress: Progress = SILENT) -> dict:
    """Accuracy, loss, params, MACs and latency (median per batch and per image, min and max over
    the repeats) of a checkpoint or an .onnx file; with `compare_to`, the same for that (dense)
    model, latencies timed interleaved, and their ratios."""
    from agfprune.core.data import LoaderOptions, build_transform, make_loader, open_dataset, skipped_images
    from agfprune.core.device import seed_everything

    device = request.validate()
    seed_everything(request.seed)
    previous_threads = torch.get_num_threads()
    if request.threads > 0:
        torch.set_num_threads(request.threads)
    try:
        subjects = [_load_for_eval(request, request.model, request.checkpoint, request.pretrained, device)]
        if request.compare_to is not None:
            subjects.append(_load_for_eval(request, None, request.compare_to, False, device))
        for subject in subjects:
            dataset = open_dataset(request.data, "val", build_transform(subject.data_config), request.skip_bad_images)
            subject.skipped = len(skipped_images(dataset))
            loader = make_loader(dataset, LoaderOptions(batch_size=request.batch_size, workers=request.workers,
                                                        limit=request.limit, seed=request.seed), device)
            subject.accuracy = evaluate_accuracy(subject.loaded.model, loader, subject.device,
                                                 request.amp, progress)
            if subject.cost is None and subject.runtime == "pytorch":
                subject.cost = count_cost(subject.loaded.model, tuple(subject.data_config["input_size"]), device)
        latencies: list[Latency | None] = [None] * len(subjects)
        if request.latency_repeats > 0:
            latencies = list(time_forward_passes(
                [(s.loaded.model, s.device, request.amp and s.runtime == "pytorch") for s in subjects],
                [tuple(s.data_config["input_size"]) for s in subjects], request.batch_size,
                repeats=request.latency_repeats))
    finally:
        torch.set_num_threads(previous_threads)
    reports = [_report(request, subject, latency) for subject, latency in zip(subjects, latencies)]
    result = reports[0]
    if len(reports) == 2:
        result["compare_to"] = reports[1]
        result.update(_comparison(reports[0], reports[1]))
    return result


def _report(request: EvalRequest, subject: _Evaluated, latency: Latency | None) -> dict:
    loaded, accuracy = subject.loaded, subject.accuracy
    assert accuracy is not None
    return {
        "model": loaded.arch,  # type: ignore[attr-defined]
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,  # type: ignore[attr-defined]
        "fingerprint": loaded.fingerprint,  # type: ignore[attr-defined]
        "runtime": subject.runtime,
        "data": str(request.data),
        "samples": accuracy.samples,
        **({"skipped_images": subject.skipped} if request.skip_bad_images else {}),
        "top1": round(accuracy.top1, 4),
        "top5": round(accuracy.top5, 4),
        "loss": round(accuracy.loss, 6),
        "params": subject.cost.params if subject.cost else None,
        "macs": subject.cost.macs if subject.cost else None,
        **(latency.as_dict() if latency is not None else dict.fromkeys(LATENCY_FIELDS)),
        "batch_size": request.batch_size,
        "threads": request.threads or (torch.get_num_threads() if subject.runtime == "pytorch" else None),
        "device": str(subject.device) if subject.runtime == "pytorch" else f"onnxruntime:{subject.device.type}",
    }


def _ratio(numerator: float | int | None, denominator: float | int | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def _comparison(model: dict, reference: dict) -> dict:
    """Ratios of `model` against `reference` (the dense model), with a one-line summary."""
    speedup = _ratio(reference["latency_ms"], model["latency_ms"])
    delta = round(model["top1"] - reference["top1"], 4)
    name = reference["checkpoint"] or reference["model"]
    parts = []
    if speedup is not None:
        parts.append(f"{speed_wording(speedup)} than {name} ({reference['runtime']}, batch {model['batch_size']}: "
                     f"{model['latency_ms']:.2f} vs {reference['latency_ms']:.2f} ms/batch, "
                     f"{model['latency_ms_per_image']:.3f} vs {reference['latency_ms_per_image']:.3f} ms/image)")
    parts.append(f"top-1 {delta:+.2f} pp")
    macs_ratio = _ratio(model["macs"], reference["macs"])
    if macs_ratio is not None:
        parts.append(f"MACs ×{macs_ratio:.3f}")
    return {"speedup": round(speedup, 3) if speedup is not None else None, "top1_delta": delta,
            "macs_ratio": macs_ratio, "params_ratio": _ratio(model["params"], reference["params"]),
            "summary": ", ".join(parts)}


def as_dict(record: Accuracy | ModelCost) -> dict:
    return asdict(record)
