"""Wall time of `prune_model` per architecture, and real CPU latency of pruned vs dense nets.

Prints one JSON document:
- "prune_time": per architecture of the prunability matrix (random weights, 32 px input,
  magnitude-l2, channel ratio 0.5): seconds of prune_model (graph trace, scoring, pruning, costs).
- "latency": for ResNet-56 (the given checkpoint, else random weights) at each --ratios value:
  median ms per batch of the dense and the pruned net (interleaved rounds, after warm-up, the
  same thread count), their ratio, and the MACs ratio next to it.

    python bench/prune_latency.py --checkpoint ../shared/models/resnet56-cifar10-jpeg.safetensors \
        --ratios 0.5 0.75 --batch-size 64 --repeats 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

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


@torch.no_grad()
def _time_once(model: torch.nn.Module, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    model(batch)
    return (time.perf_counter() - started) * 1000.0


def latency(checkpoint: str | None, ratios: list[float], batch_size: int, repeats: int) -> list[dict]:
    from agfprune.core.models import load_model
    from agfprune.core.pruning import PruneOptions, prune_model

    torch.manual_seed(0)
    loaded = load_model(None if checkpoint else "cifar_resnet56", checkpoint)
    dense = loaded.model.eval()
    batch = torch.randn(batch_size, *loaded.input_size)
    rows = []
    for ratio in ratios:
        result = prune_model(loaded, _scorer("magnitude-l2"), PruneOptions(ratio=ratio))
        pruned = result.model.eval()
        for _ in range(3):  # warm-up
            _time_once(dense, batch), _time_once(pruned, batch)
        dense_ms, pruned_ms = [], []
        for _ in range(repeats):  # interleaved, so that load changes hit both alike
            dense_ms.append(_time_once(dense, batch))
            pruned_ms.append(_time_once(pruned, batch))
        dense_median, pruned_median = statistics.median(dense_ms), statistics.median(pruned_ms)
        rows.append({
            "model": loaded.arch, "ratio": ratio, "batch_size": batch_size, "repeats": repeats,
            "dense_ms": round(dense_median, 2), "pruned_ms": round(pruned_median, 2),
            "latency_ratio": round(pruned_median / dense_median, 4),
            "macs_ratio": round(result.record.macs_after / result.record.macs_before, 4),
            "params_ratio": round(result.record.params_after / result.record.params_before, 4),
            "speedup": round(dense_median / pruned_median, 3),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="ResNet-56 checkpoint for the latency part")
    parser.add_argument("--archs", nargs="*", default=list(MATRIX), help="architectures to time pruning on")
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.75])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for both nets)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "threads": args.threads,
        "torch": torch.__version__,
        "prune_time": prune_times(args.archs, args.prune_ratio),
        "latency": latency(args.checkpoint, args.ratios, args.batch_size, args.repeats),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
