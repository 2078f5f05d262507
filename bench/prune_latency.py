"""Wall time of `prune_model` per architecture, and real CPU latency of pruned vs dense nets.

Prints one JSON document:
- "prune_time": per architecture of the prunability matrix (random weights, 32 px input,
  magnitude-l2, channel ratio 0.5): seconds of prune_model (graph trace, scoring, pruning, costs).
  `--archs` with no names skips it.
- "latency": for each --checkpoint (default: the shared ResNet-56 and ViT) at each --ratios value
  (magnitude-l2; latency does not depend on which channels go): median ms per batch of the dense
  and the pruned net in PyTorch eager and, exported to ONNX, in onnxruntime, at each --batch-sizes
  value, one thread (--threads) for both runtimes; dense and pruned interleaved round by round, in
  --blocks independent blocks: the speed-up (median over blocks) and its per-block values next to
  the MACs ratio.

    python bench/prune_latency.py --archs --ratios 0.5 --batch-sizes 1 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

MATRIX = {
    "resnet18": dict(num_classes=10), "resnet50": dict(num_classes=10),
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, num_classes=10),
    "deit_tiny_patch16_224": dict(img_size=32, patch_size=8, num_classes=10),
    "convnext_atto": dict(num_classes=10), "mobilenetv3_small_100": dict(num_classes=10),
    "efficientnet_b0": dict(num_classes=10), "cifar_resnet20": {}, "cifar_resnet56": {},
}


def _scorer(name: str):
    from agfprune.core.metrics import get_metric
    from agfprune.core.pruning import MetricScorer

    return MetricScorer(name, lambda model, step: get_metric(name))


def prune_times(archs: list[str], ratio: float) -> dict[str, dict[str, float]]:
    from agfprune.core.models import load_model
    from agfprune.core.pruning import PruneOptions, prune_model

    times = {}
    for arch in archs:
        torch.manual_seed(0)
        loaded = load_model(arch, timm_kwargs=MATRIX[arch])
        started = time.perf_counter()
        result = prune_model(loaded, _scorer("magnitude-l2"), PruneOptions(ratio=ratio), input_size=(3, 32, 32))
        times[arch] = {"seconds": round(time.perf_counter() - started, 3),
                       "params_reduction": round(result.record.params_reduction, 4),
                       "macs_reduction": round(result.record.macs_reduction, 4)}
    return times


def _onnx(loaded, folder: Path, name: str, threads: int):
    from agfprune.core.export import export_model
    from agfprune.core.onnx_model import OnnxModule

    path = folder / f"{name}.onnx"
    export_model(loaded, "onnx", path)
    return OnnxModule(path, threads=threads)


def latency(checkpoints: list[str], ratios: list[float], batch_sizes: list[int], repeats: int,
            threads: int, runtimes: list[str], device: torch.device, warmup: int = 5,
            blocks_per_figure: int = 3) -> list[dict]:
    """Each figure is timed in `blocks_per_figure` independent blocks of `warmup` + `repeats`
    interleaved rounds; the speed-up is the median over blocks of the ratio of medians, and the
    per-block values show its spread (one slow stretch of a shared machine moves one block)."""
    from agfprune.core.evaluate import time_forward_passes
    from agfprune.core.models import LoadedModel, load_model
    from agfprune.core.pruning import PruneOptions, prune_model

    cpu = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for checkpoint in checkpoints:
            torch.manual_seed(0)
            loaded = load_model(checkpoint=checkpoint)
            dense = loaded.model.eval()
            dense_onnx = _onnx(loaded, Path(folder), "dense", threads) if "onnxruntime" in runtimes else None
            for ratio in ratios:
                result = prune_model(loaded, _scorer("magnitude-l2"), PruneOptions(ratio=ratio))
                pruned = result.model.eval()
                models = {}
                if dense_onnx is not None:  # export first: exporting moves a model to the CPU
                    pruned_loaded = LoadedModel(model=pruned, arch=loaded.arch, timm_kwargs=loaded.timm_kwargs,
                                                data_config=loaded.data_config, fingerprint="pruned",
                                                metadata={"structure": {"pruned": True}})
                    models["onnxruntime"] = (dense_onnx, _onnx(pruned_loaded, Path(folder), f"pruned{ratio}", threads))
                if "eager" in runtimes:
                    models["eager"] = (dense.to(device), pruned.to(device))
                for runtime, (dense_model, pruned_model) in models.items():
                    where = device if runtime == "eager" else cpu  # onnxruntime: its CPU provider
                    for batch_size in batch_sizes:
                        # fewer timed rounds for big batches keeps the run short; medians either way
                        count = max(5, repeats // 4) if batch_size >= 64 else repeats
                        blocks = [time_forward_passes([(dense_model, where, False), (pruned_model, where, False)],
                                                      [loaded.input_size] * 2, batch_size, warmup=warmup,
                                                      repeats=count) for _ in range(blocks_per_figure)]
                        speedups = sorted(dense.median_ms / pruned.median_ms for dense, pruned in blocks)
                        dense_ms = statistics.median(dense.median_ms for dense, _ in blocks)
                        pruned_ms = statistics.median(pruned.median_ms for _, pruned in blocks)
                        rows.append({
                            "model": loaded.arch, "checkpoint": checkpoint, "ratio": ratio, "runtime": runtime,
                            "device": str(where),
                            "batch_size": batch_size, "threads": threads, "warmup": warmup,
                            "repeats": count, "blocks": blocks_per_figure,
                            "dense_ms": round(dense_ms, 3), "pruned_ms": round(pruned_ms, 3),
                            "dense_ms_min_max": [round(min(d.min_ms for d, _ in blocks), 3),
                                                 round(max(d.max_ms for d, _ in blocks), 3)],
                            "pruned_ms_min_max": [round(min(p.min_ms for _, p in blocks), 3),
                                                  round(max(p.max_ms for _, p in blocks), 3)],
                            "speedup": round(statistics.median(speedups), 3),
                            "speedup_blocks": [round(value, 3) for value in speedups],
                            "latency_ratio": round(pruned_ms / dense_ms, 4),
                            "macs_ratio": round(result.record.macs_after / result.record.macs_before, 4),
                            "params_ratio": round(result.record.params_after / result.record.params_before, 4),
                        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", default=["../shared/models/resnet56-cifar10-jpeg.safetensors",
                                                            "../shared/models/vit-small6-cifar10-jpeg.safetensors"],
                        help="checkpoints for the latency part")
    parser.add_argument("--archs", nargs="*", default=list(MATRIX), help="architectures to time pruning on")
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 128])
    parser.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime"], choices=["eager", "onnxruntime"])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds before each block")
    parser.add_argument("--blocks", type=int, default=3, help="independent timed blocks per figure (spread)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, the same for every net and runtime")
    parser.add_argument("--device", default="cpu", help="where the eager nets run (onnxruntime uses its CPU provider)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "threads": args.threads,
        "torch": torch.__version__,
        "prune_time": prune_times(args.archs, args.prune_ratio),
        "latency": latency(args.checkpoint, args.ratios, args.batch_sizes, args.repeats, args.threads,
                           args.runtimes, torch.device(args.device), args.warmup, args.blocks),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
