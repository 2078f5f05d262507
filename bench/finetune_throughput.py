"""Training throughput of `agfprune finetune` against a raw PyTorch training loop.

Both train the same checkpoint on the same seeded subset of the same data with the same transforms
(timm config, training augmentation), batch size, SGD (Nesterov) and loss, in this process, one
epoch each, interleaved over --repeats rounds; on CUDA the raw loop also uses AMP and channels_last,
as finetune does. finetune's images/s is its own epoch record (training steps only, validation
excluded). Prints one JSON document with the medians and their ratio (finetune / raw).

    python bench/finetune_throughput.py --checkpoint ../shared/models/resnet56-cifar10-jpeg.safetensors \
        --data ../shared/data/cifar10-jpeg --limit 1024 --batch-size 64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def raw_loop(args: argparse.Namespace, device: torch.device) -> float:
    """Images per second of a plain loop: DataLoader -> forward -> CE -> backward -> SGD step."""
    from torch.utils.data import DataLoader

    from agfprune.core.data import build_transform, open_dataset, subsample
    from agfprune.core.device import autocast
    from agfprune.core.models import load_model

    loaded = load_model(checkpoint=args.checkpoint, device=device)
    model = loaded.model.train()
    dataset = subsample(open_dataset(args.data, "train", build_transform(loaded.data_config, train=True)),
                        args.limit, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed),
                        pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    images_seen = 0
    started = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, True):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images_seen / (time.perf_counter() - started)


def agfprune_finetune(args: argparse.Namespace, folder: Path) -> float:
    from agfprune.core.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(checkpoint=Path(args.checkpoint), data=str(args.data), out=folder / "ft.safetensors",
                            val=str(args.data), val_limit=args.batch_size, epochs=1, lr=0.01,
                            batch_size=args.batch_size, workers=args.workers, limit=args.limit, save_every=0,
                            seed=args.seed, device=args.device, eval_initial=False)
    return float(finetune(config).epochs[0]["images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="../shared/models/resnet56-cifar10-jpeg.safetensors")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--limit", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from agfprune.core.device import resolve_device

    device = resolve_device(args.device)
    rates: dict[str, list[float]] = {"raw": [], "finetune": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):  # interleaved, so that load drifts hit both alike
            rates["raw"].append(round(raw_loop(args, device), 2))
            rates["finetune"].append(round(agfprune_finetune(args, Path(folder)), 2))
    raw, tuned = statistics.median(rates["raw"]), statistics.median(rates["finetune"])
    print(json.dumps({
        "checkpoint": args.checkpoint, "data": args.data, "images": args.limit, "batch_size": args.batch_size,
        "device": str(device), "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "images_per_second": rates, "median_raw": raw, "median_finetune": tuned,
        "ratio_finetune_over_raw": round(tuned / raw, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
