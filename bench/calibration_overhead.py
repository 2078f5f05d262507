"""Cost of `calibrate` against a plain forward+backward over the same pre-decoded batches.

Prints one JSON document: median seconds of each (interleaved repeats, after a warm-up batch), their
ratio (target ≤ 1.10), and the peak memory of each measured in a fresh subprocess as the growth of
the peak resident set (Linux /proc/self/status VmHWM minus VmRSS before the work; CUDA:
max_memory_allocated), with the ratio calibrate / plain (target ≤ 1.2). With --micro-batch M a third
process calibrates in chunks of M images, to show the bound it gives.

    python bench/calibration_overhead.py \
        --checkpoint ../shared/models/resnet56-cifar10-jpeg.safetensors \
        --data ../shared/data/cifar10-jpeg --calib-batches 16 --calib-batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


# glibc serves every block of 64 KiB or more by mmap and unmaps it on free, so the resident set tracks
# the live tensors: with its default adaptive threshold, freed activations stay resident or not
# depending on allocation history, and the same plain step measured 119-214 MiB in repeated runs
_WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _prepare(args: argparse.Namespace):
    from agfprune.core.data import LoaderOptions, build_transform, make_loader, open_dataset
    from agfprune.core.device import seed_everything
    from agfprune.core.models import load_model

    seed_everything(args.seed)
    loaded = load_model(args.model, args.checkpoint, device=args.device)
    dataset = open_dataset(args.data, "train", build_transform(loaded.data_config))
    loader = make_loader(dataset, LoaderOptions(batch_size=args.batch_size, seed=args.seed, shuffle=True))
    batches = []
    for images, labels in loader:  # decode once, so that only the model work is timed
        batches.append((images.to(args.device), labels.to(args.device)))
        if len(batches) == args.batches:
            break
    return loaded, batches


def _plain(model, batches, device) -> None:
    from agfprune.core.device import autocast

    model.eval()
    for images, labels in batches:
        with autocast(device, device.type == "cuda"):  # calibrate runs AMP on CUDA too
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        loss.backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()


def _calibrate(model, batches, device, micro_batch=None) -> None:
    from agfprune.core.calibration import collect_statistics

    collect_statistics(model, batches, device, batches=len(batches), micro_batch=micro_batch, amp=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize()


def _worker(args: argparse.Namespace) -> None:
    loaded, batches = _prepare(args)
    device = torch.device(args.device)
    _plain(loaded.model, batches[:1], device)  # warm up kernels and allocator alike for both modes
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:  # reset the peak RSS to the current RSS (Linux >= 4.0), so the warm-up's peak does not count
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _status_kib("VmRSS")
    if args.worker == "plain":
        _plain(loaded.model, batches, device)
    else:
        _calibrate(loaded.model, batches, device, args.micro_batch if args.worker == "calibrate-micro" else None)
    result = {"rss_before_mib": round(before / 1024, 1),
              "peak_rss_growth_mib": round((_status_kib("VmHWM") - before) / 1024, 1)}
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


def _memory_ratio(measured: dict, plain: dict) -> float:
    key = "cuda_peak_allocated_mib" if "cuda_peak_allocated_mib" in plain else "peak_rss_growth_mib"
    return round(measured[key] / max(plain[key], 1e-9), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="timm name (optional when the checkpoint records it)")
    parser.add_argument("--checkpoint", default="../shared/models/resnet56-cifar10-jpeg.safetensors")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); 1 keeps CPU-time ratios stable on busy machines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--micro-batch", type=int, default=None, help="also measure calibrate --micro-batch M")
    parser.add_argument("--worker", choices=("plain", "calibrate", "calibrate-micro"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        _worker(args)
        return
    loaded, batches = _prepare(args)
    device = torch.device(args.device)
    _plain(loaded.model, batches[:1], device)
    _calibrate(loaded.model, batches[:1], device)
    times: dict[str, list[float]] = {"plain": [], "calibrate": []}
    cpu_times: dict[str, list[float]] = {"plain": [], "calibrate": []}
    for _ in range(args.repeats):  # interleaved, so that machine load drifts hit both alike
        for name, run in (("plain", _plain), ("calibrate", _calibrate)):
            started, started_cpu = time.perf_counter(), time.process_time()
            run(loaded.model, batches, device)
            times[name].append(round(time.perf_counter() - started, 3))
            cpu_times[name].append(round(time.process_time() - started_cpu, 3))
    memory = {}
    for name in ("plain", "calibrate") + (("calibrate-micro",) if args.micro_batch else ()):
        command = [sys.executable, __file__, "--worker", name] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "repeats") and v is not None]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=_WORKER_ENV).stdout
        memory[name] = json.loads(output.strip().splitlines()[-1])
    plain, calib = statistics.median(times["plain"]), statistics.median(times["calibrate"])
    plain_cpu, calib_cpu = statistics.median(cpu_times["plain"]), statistics.median(cpu_times["calibrate"])
    print(json.dumps({
        "model": loaded.arch, "checkpoint": str(args.checkpoint), "data": str(args.data),
        "batches": len(batches), "batch_size": args.batch_size, "device": str(device),
        "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "seconds": times, "median_plain_s": plain, "median_calibrate_s": calib,
        "ratio_calibrate_over_plain": round(calib / plain, 3),
        "process_cpu_seconds": cpu_times,
        "ratio_cpu_time_calibrate_over_plain": round(calib_cpu / plain_cpu, 3),
        "memory_method": "fresh subprocess each; peak RSS growth = VmHWM after the work - VmRSS before "
                         "(model and decoded batches already resident; MALLOC_MMAP_THRESHOLD_=65536 so that RSS follows "
                         "the live tensors)"
                         + ("; CUDA: torch.cuda.max_memory_allocated" if device.type == "cuda" else ""),
        "memory": memory,
        **{f"ratio_peak_memory_{name.replace('-', '_')}_over_plain": _memory_ratio(memory[name], memory["plain"])
           for name in memory if name != "plain"},
    }, indent=2))


if __name__ == "__main__":
    main()
