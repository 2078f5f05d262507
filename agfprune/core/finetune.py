"""Fine-tuning driver: epochs of `Trainer` steps, validation, best/last checkpoints, resumable state
(its data: `finetune_data`; its state file: `finetune_state`).

Outputs for `--out NAME.safetensors` (see docs/finetune.md):
  NAME.safetensors       best weights by validation top-1 (same checkpoint format as the input,
                         so pruned structure, pruning record, timm kwargs and data config carry over)
  NAME.last.safetensors  weights after the last finished epoch
  NAME.state.pt          resumable training state (tensors + plain values, read with weights_only=True)
  NAME.log.jsonl         one JSON object per epoch (epoch 0 = before training)

Resuming is exact on CPU: the sample order comes from a seeded per-epoch permutation, and every
sample's augmentation from its own seed (seed, epoch, index), so skipping the finished batches of
an epoch reproduces the rest of it without replaying the data or the global random streams.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from agfprune.core.atomic import check_outputs, write_text_atomic
from agfprune.core.checkpoint import write_checkpoint
from agfprune.core.data import build_loader, build_transform, dataset_classes, open_dataset, subsample
from agfprune.core.device import resolve_device, seed_everything
from agfprune.core.distributed import (DistContext, all_reduce_sum, barrier, init_distributed,
                                       shard_indices, shutdown, unwrap, wrap_model)
from agfprune.core.errors import DataError, ModelError, UsageError
from agfprune.core.evaluate import Accuracy, accuracy_from_logits, predict_logits
from agfprune.core.finetune_data import EpochSeededDataset, ResumableSampler
from agfprune.core.finetune_state import (STATE_FORMAT, STATE_VERSION, load_state, restore_rng, restoring,
                                         rng_state, write_state)
from agfprune.core.models import LoadedModel, load_model
from agfprune.core.progress import SILENT, Progress
from agfprune.core.train import OPTIMIZERS, LossConfig, Trainer, build_optimizer, current_lr, warmup_cosine

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Metadata written by write_checkpoint itself, or describing how the *source* weights were trained.
RESERVED_METADATA = {"format", "format_version", "agfprune_version", "timm_model", "arch", "timm_kwargs",
                     "data_config", "structure", "fingerprint", "metadata_fingerprint", "result", "recipe",
                     "finetune"}


@dataclass
class FinetuneConfig:
    """Everything `agfprune finetune` takes; `None` learning rate / weight decay pick per-optimiser defaults."""

    checkpoint: Path
    data: str
    out: Path
    val: str | None = None
    model: str | None = None
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    teacher: str | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    batch_size: int = 128
    workers: int = 0
    limit: int | None = None
    val_limit: int | None = None
    save_every: int = 200
    state: Path | None = None
    log: Path | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    eval_initial: bool = True
    skip_bad_images: bool = False
    data_overrides: Any = None  # DataOverrides from --img-size/--mean/--std


@dataclass
class FinetuneOutputs:
    best: Path
    last: Path
    state: Path
    log: Path


def output_paths(out: Path, state: Path | None = None, log: Path | None = None) -> FinetuneOutputs:
    """NAME.safetensors (best), NAME.last.safetensors, NAME.state.pt, NAME.log.jsonl."""
    out = Path(out)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.stem
    return FinetuneOutputs(best=out, last=out.with_name(f"{stem}.last.safetensors"),
                           state=Path(state) if state else out.with_name(f"{stem}.state.pt"),
                           log=Path(log) if log else out.with_name(f"{stem}.log.jsonl"))


@dataclass
class FinetuneResult:
    """What a run produced; `epochs` holds the per-epoch log records."""

    outputs: FinetuneOutputs
    arch: str
    initial: dict[str, Any] | None
    final: dict[str, Any]
    best_top1: float
    best_epoch: int
    epochs: list[dict[str, Any]]
    train_samples: int
    world_size: int
    resumed_at_step: int | None
    source_fingerprint: str
    best_fingerprint: str | None = None
    run_fingerprint: str = ""

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["outputs"] = {k: str(v) for k, v in asdict(self.outputs).items()}
        return document


# ---------------------------------------------------------------------------------------------
# Preparation


def _validate_config(config: FinetuneConfig) -> None:
    if config.epochs < 1:
        raise UsageError(f"--epochs {config.epochs}: must be ≥ 1")
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer {config.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if config.batch_size <= 0:
        raise UsageError(f"--batch-size {config.batch_size}: must be positive")
    if config.workers < 0:
        raise UsageError(f"--workers {config.workers}: must be ≥ 0")
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr > 0):
        raise UsageError(f"--lr {config.lr}: must be a positive number")
    if config.weight_decay is not None and not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise UsageError(f"--weight-decay {config.weight_decay}: must be ≥ 0")
    if config.save_every < 0:
        raise UsageError(f"--save-every {config.save_every}: must be ≥ 0 (0 = only at epoch ends)")
    if not 0 <= config.warmup_epochs <= config.epochs:
        raise UsageError(f"--warmup-epochs {config.warmup_epochs}: must be between 0 and --epochs")
    for name, value in (("--limit", config.limit), ("--eval-limit", config.val_limit)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} {value}: must be positive")
    if not str(config.out).endswith(".safetensors"):
        raise UsageError(f"--out {config.out}: must end in .safetensors")
    LossConfig(config.label_smoothing, config.kd_alpha, config.kd_temperature).validate()


def _load_teacher(spec: str, student: LoadedModel, device: torch.device, progress: Progress,
                  overrides: Any = None) -> LoadedModel:
    """A teacher from a checkpoint path or a timm name (hub weights); it must predict the same classes."""
    path = Path(spec)
    if path.exists() or path.suffix in (".safetensors", ".pth", ".pt", ".th", ".bin", ".ckpt"):
        teacher = load_model(checkpoint=path, device=device)
    else:
        teacher = load_model(spec, pretrained=True, device=device)
    if teacher.num_classes != student.num_classes:
        raise ModelError(f"--teacher {spec}: predicts {teacher.num_classes} classes, but the model being "
                         f"fine-tuned predicts {student.num_classes}; distillation needs the same classes")
    if overrides:  # --img-size/--mean/--std describe the images, which both models see
        teacher.data_config = overrides.apply(teacher.data_config)
        teacher.check_input_size(teacher.data_config)
    if tuple(teacher.input_size) != tuple(student.input_size):
        raise ModelError(f"--teacher {spec}: expects input {tuple(teacher.input_size)}, the student "
                         f"{tuple(student.input_size)}; both must see the same images")
    for key in ("mean", "std"):
        if tuple(teacher.data_config.get(key, ())) != tuple(student.data_config.get(key, ())):
            progress.log(f"warning: teacher {key} {teacher.data_config.get(key)} differs from the student's "
                         f"{student.data_config.get(key)}; the teacher sees the student's normalisation")
    for parameter in teacher.model.parameters():
        parameter.requires_grad_(False)
    return teacher


def _open_data(config: FinetuneConfig, data_config: dict[str, Any], num_classes: int) -> tuple[Dataset, Dataset]:
    train = open_dataset(config.data, "train", build_transform(data_config, train=True), config.skip_bad_images)
    val_source = config.val
    if val_source is None:
        from agfprune.core.data import resolve_image_root

        data_path = Path(config.data)
        if str(config.data).startswith("synthetic:"):
            val_source = config.data
        elif data_path.is_dir() and resolve_image_root(data_path, "val") != data_path:
            val_source = str(data_path)
        else:
            raise DataError(f"no validation data: --data {config.data} has no val/ split; pass --eval-data PATH")
    val = open_dataset(val_source, "val", build_transform(data_config, train=False), config.skip_bad_images)
    for name, dataset in (("--data", train), ("--eval-data", val)):
        classes = dataset_classes(dataset)
        if classes > num_classes:
            raise DataError(f"{name}: the data has {classes} classes but the model predicts {num_classes}")
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DataError(f"{name}: the data set is empty")
    return subsample(train, config.limit, config.seed), subsample(val, config.val_limit, config.seed)


def _run_key(config: FinetuneConfig, loaded: LoadedModel, teacher: LoadedModel | None, lr: float,
             weight_decay: float, train_samples: int, context: DistContext) -> dict[str, Any]:
    """What must match for a state file to be resumed: the source weights and the recipe."""
    return {
        "source_fingerprint": loaded.fingerprint, "arch": loaded.arch,
        "teacher_fingerprint": teacher.fingerprint if teacher else None,
        "optimizer": config.optimizer, "lr": lr, "weight_decay": weight_decay, "momentum": config.momentum,
        "epochs": config.epochs, "warmup_epochs": config.warmup_epochs,
        "label_smoothing": config.label_smoothing,
        "kd_alpha": config.kd_alpha if teacher else 0.0, "kd_temperature": config.kd_temperature,
        "batch_size": config.batch_size, "seed": config.seed, "train_samples": train_samples,
        "world_size": context.world_size,
    }


def _fingerprint(run_key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run_key, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Validation (sharded over ranks, summed exactly)


@torch.no_grad()
def validate(model: torch.nn.Module, dataset: Dataset, context: DistContext, device: torch.device,
             batch_size: int, workers: int, amp: bool, progress: Progress = SILENT) -> Accuracy:
    """Top-1/top-5/loss over the whole validation set (core evaluation); each rank evaluates its shard
    and the ranks sum correct counts, loss sums and sample counts."""
    shard = Subset(dataset, shard_indices(len(dataset), context))  # type: ignore[arg-type]
    sums = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, loss sum, count
    if len(shard):
        loader = build_loader(shard, workers=workers, device=device, batch_size=batch_size, shuffle=False)
        logits, labels = predict_logits(model, loader, device, amp, progress, "validate")
        shard_accuracy = accuracy_from_logits(logits, labels)
        count = shard_accuracy.samples
        sums += torch.tensor([round(shard_accuracy.top1 * count / 100.0), round(shard_accuracy.top5 * count / 100.0),
                              shard_accuracy.loss * count, count], dtype=torch.float64)
    all_reduce_sum(sums, context)
    count = max(1.0, sums[3].item())
    return Accuracy(top1=100.0 * sums[0].item() / count, top5=100.0 * sums[1].item() / count,
                    loss=sums[2].item() / count, samples=int(sums[3].item()))


def _accuracy_record(accuracy: Accuracy) -> dict[str, Any]:
    return {"val_top1": round(accuracy.top1, 4), "val_top5": round(accuracy.top5, 4),
            "val_loss": round(accuracy.loss, 6) if math.isfinite(accuracy.loss) else None,
            "val_samples": accuracy.samples}


# ---------------------------------------------------------------------------------------------
# The driver


def finetune(config: FinetuneConfig, progress: Progress = SILENT) -> FinetuneResult:
    """Fine-tune `config.checkpoint` on `config.data`, keeping the best and last weights."""
    _validate_config(config)
    outputs = output_paths(config.out, config.state, config.log)
    check_outputs({"--out": outputs.best, "last weights": outputs.last, "--state": outputs.state, "--log": outputs.log},
                  {"CHECKPOINT": config.checkpoint, "--teacher": config.teacher, "--data": config.data,
                   "--val": config.val})
    context, device = init_distributed(resolve_device(config.device))
    if not context.is_main:
        progress = SILENT
    try:
        return _finetune(config, outputs, context, device, progress)
    finally:
        shutdown(context)


def _finetune(config: FinetuneConfig, outputs: FinetuneOutputs, context: DistContext,
              device: torch.device, progress: Progress) -> FinetuneResult:
    seed_everything(config.seed)
    loaded = load_model(config.model, config.checkpoint, device=device)
    if config.data_overrides:
        loaded.data_config = config.data_overrides.apply(loaded.data_config)
        loaded.check_input_size(loaded.data_config)
    teacher = (_load_teacher(config.teacher, loaded, device, progress, config.data_overrides)
               if config.teacher else None)
    train_set, val_set = _open_data(config, loaded.data_config, loaded.num_classes)
    lr = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
    weight_decay = config.weight_decay if config.weight_decay is not None else DEFAULT_WEIGHT_DECAY[config.optimizer]
    run_key = _run_key(config, loaded, teacher, lr, weight_decay, len(train_set), context)  # type: ignore[arg-type]
    run_fingerprint = _fingerprint(run_key)
    state = load_state(outputs.state, run_fingerprint, run_key) if config.resume else None

    seeded_train = EpochSeededDataset(train_set, config.seed)
    sampler = ResumableSampler(seeded_train, context, config.seed)
    per_rank = sampler.num_samples
    drop_last = per_rank > config.batch_size
    steps_per_epoch = per_rank // config.batch_size if drop_last else 1
    total_steps = steps_per_epoch * config.epochs

    model = loaded.model
    optimizer = build_optimizer(model, config.optimizer, lr, weight_decay, config.momentum)
    schedule = warmup_cosine(optimizer, total_steps, round(config.warmup_epochs * steps_per_epoch))
    loss_config = LossConfig(config.label_smoothing, config.kd_alpha if teacher else 0.0, config.kd_temperature)
    generator = torch.Generator()

    start_epoch, start_step, global_step = 0, 0, 0
    records: list[dict[str, Any]] = []
    initial: dict[str, Any] | None = None
    best_top1, best_epoch = -1.0, 0
    loss_sum, loss_count, epoch_seconds = 0.0, 0, 0.0
    if state is not None:
        with restoring(outputs.state, "model"):
            model.load_state_dict(state["model"])
        start_epoch, start_step, global_step = int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"])
        records = json.loads(state["records"])
        initial = json.loads(state["initial"]) if state.get("initial") else None
        best_top1, best_epoch = float(state["best_top1"]), int(state["best_epoch"])
        loss_sum, loss_count = float(state["epoch_loss_sum"]), int(state["epoch_loss_count"])
        epoch_seconds = float(state["epoch_seconds"])
        progress.log(f"resuming {outputs.state}: epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch}")

    trainer = Trainer(wrap_model(model, context, device), optimizer, schedule, loss_config, device,
                      teacher.model if teacher else None, amp=config.amp)
    if state is not None:
        for part, restore in (("optimizer", optimizer.load_state_dict), ("schedule", schedule.load_state_dict),
                              ("scaler", trainer.scaler.load_state_dict), ("rng", lambda rng: restore_rng(rng, generator))):
            with restoring(outputs.state, part):
                restore(state[part])

    def write_weights(path: Path, kind: str, epoch: int, accuracy: Accuracy) -> str:
        extra = {k: v for k, v in loaded.metadata.items() if k not in RESERVED_METADATA}
        extra["finetune"] = {"kind": kind, "epoch": epoch, "epochs": config.epochs, **_accuracy_record(accuracy),
                             "source": str(config.checkpoint), "teacher": config.teacher,
                             "run_fingerprint": run_fingerprint, **{k: v for k, v in run_key.items()
                                                                    if k not in ("arch",)}}
        return write_checkpoint(path, model, arch=loaded.arch, timm_kwargs=loaded.timm_kwargs,
                                data_config=loaded.data_config, structure=loaded.metadata.get("structure") or {},
                                extra=extra)

    def save_state(epoch: int, step_in_epoch: int) -> None:
        if not context.is_main:
            return
        write_state(outputs.state, {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "run_fingerprint": run_fingerprint, "run_key": json.dumps(run_key, sort_keys=True),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": trainer.scaler.state_dict(), "rng": rng_state(generator),
            "best_top1": best_top1, "best_epoch": best_epoch,
            "initial": json.dumps(initial) if initial else "", "records": json.dumps(records),
            "epoch_loss_sum": loss_sum, "epoch_loss_count": loss_count, "epoch_seconds": epoch_seconds,
        })

    def write_log() -> None:
        if context.is_main:
            lines = ([{"epoch": 0, **initial}] if initial else []) + records
            write_text_atomic(outputs.log, "".join(json.dumps(line) + "\n" for line in lines))

    if state is None and config.eval_initial:
        accuracy = validate(unwrap(trainer.model), val_set, context, device, config.batch_size,
                            config.workers, config.amp, progress)
        initial = _accuracy_record(accuracy)
        progress.log(f"before fine-tuning: val top-1 {accuracy.top1:.2f}%")
        # the log (with this epoch-0 line) is first written after epoch 1, so that a run failing before
        # its first state save (NaN loss, bad data, Ctrl-C) leaves no new file behind

    final = records[-1] if records else None
    best_fingerprint = None
    for epoch in range(start_epoch, config.epochs):
        skip_steps = start_step if epoch == start_epoch else 0
        seeded_train.set_epoch(epoch)
        sampler.set_epoch(epoch)
        sampler.skip = skip_steps * config.batch_size
        generator.manual_seed(config.seed * 7919 + epoch)
        loader = build_loader(seeded_train, workers=config.workers, device=device, batch_size=config.batch_size,
                              sampler=sampler, drop_last=drop_last, generator=generator)
        if skip_steps == 0:
            loss_sum, loss_count, epoch_seconds = 0.0, 0, 0.0
        started = time.perf_counter()
        for step_in_epoch, (images, labels) in enumerate(
                progress.track(loader, total=len(loader), description=f"epoch {epoch + 1}/{config.epochs}"),
                start=skip_steps):
            loss_sum += trainer.step(images, labels, global_step)
            loss_count += 1
            global_step += 1
            if config.save_every and global_step % config.save_every == 0 and step_in_epoch + 1 < steps_per_epoch:
                epoch_seconds += time.perf_counter() - started
                started = time.perf_counter()
                save_state(epoch, step_in_epoch + 1)
        epoch_seconds += time.perf_counter() - started
        accuracy = validate(unwrap(trainer.model), val_set, context, device, config.batch_size,
                            config.workers, config.amp, progress)
        is_best = accuracy.top1 > best_top1
        # "(best)" is news only when the epoch also beats the model as it came in (the epoch-0 evaluation)
        improved = is_best and (initial is None or round(accuracy.top1, 4) > float(initial["val_top1"]))
        if is_best:
            best_top1, best_epoch = accuracy.top1, epoch + 1
        trained = steps_per_epoch * config.batch_size * context.world_size
        record = {"epoch": epoch + 1, "global_step": global_step,
                  "train_loss": round(loss_sum / max(1, loss_count), 6), "lr": current_lr(optimizer),
                  **_accuracy_record(accuracy), "best": is_best, "improved": improved,
                  "seconds": round(epoch_seconds, 3),
                  "images_per_second": round(trained / max(epoch_seconds, 1e-9), 2)}
        records.append(record)
        final = record
        if context.is_main:
            if is_best:
                best_fingerprint = write_weights(outputs.best, "best", epoch + 1, accuracy)
            write_weights(outputs.last, "last", epoch + 1, accuracy)
            write_log()
        progress.log(f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f}, "
                     f"val top-1 {accuracy.top1:.2f}%{' (best)' if improved else ''}, {epoch_seconds:.1f} s")
        save_state(epoch + 1, 0)
        barrier(context)

    if final is None:  # only a resumed state can claim finished epochs without their records
        raise ModelError(f"{outputs.state}: field 'records' holds no finished epoch, but 'epoch' says "
                         f"{start_epoch} of {config.epochs} are done; the state file is damaged")
    return FinetuneResult(
        outputs=outputs, arch=loaded.arch, initial=initial, final=final, best_top1=round(best_top1, 4),
        best_epoch=best_epoch, epochs=records, train_samples=len(train_set),  # type: ignore[arg-type]
        world_size=context.world_size, resumed_at_step=int(state["global_step"]) if state else None,
        source_fingerprint=loaded.fingerprint, best_fingerprint=best_fingerprint, run_fingerprint=run_fingerprint,
    )
