"""Images/s of `compare`'s finetune loop against a plain training loop over pre-decoded tensors.

The finetune loop is the one every compare cell runs (`_Runner.finetune`: uint8 images decoded
once, pad-crop/flip/normalise in torch, `Trainer.step` with its NaN guard); the raw loop is the
least a training step can cost: the same model, batch size and SGD over float tensors that are
already normalised in memory (no augmentation). Rounds alternate between the two (after a warm-up
that also decodes the images), and each side reports its median round. Prints one JSON document;
the target is "ratio" ≥ 0.9.

    OMP_NUM_THREADS=1 python bench/finetune_loop.py --checkpoint ../shared/models/resnet20-cifar10-jpeg.safetensors \
        --data ../shared/data/cifar10-jpeg --images 2048 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def raw_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, lr: float) -> float:
    """One pass of plain SGD steps; returns images/s."""
    from agfprune.core.train import build_optimizer

    optimizer = build_optimizer(model, "sgd", lr, 5e-4)
    model.train()
    steps = len(images) // batch_size
    started = time.perf_counter()
    for step in range(steps):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model checkpoint (default: random cifar_resnet20)")
    parser.add_argument("--data", default="synthetic:4096", help="training images (ImageFolder root, .npz, synthetic:N)")
    parser.add_argument("--images", type=int, default=2048, help="images per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from agfprune.core.compare import CompareConfig, _Runner
    from agfprune.core.device import configure_threads
    from agfprune.core.models import load_model
    from agfprune.core.progress import SILENT

    threads = configure_threads()
    torch.manual_seed(0)
    loaded = load_model("cifar_resnet20" if not args.checkpoint else None, args.checkpoint)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        config = CompareConfig(calib_data=args.data, eval_data=args.data, out=Path(folder), metrics=["random"],
                               ratios=[0.5], finetune_epochs=1, finetune_limit=args.images,
                               finetune_batch_size=args.batch_size)
        runner = _Runner(loaded, config, device, progress=SILENT)
        # the raw loop's inputs: the same seeded images, decoded and normalised once, no augmentation
        batches = runner.training_batches(0)
        assert runner.train_images is not None, "the tensor path needs inputs of at most 64 px"
        decoded, labels = runner.train_images.batch(batches.subset)
        inputs = ((decoded.float() - batches.mean) / batches.std).contiguous()
        finetune_rates, raw_rates = [], []
        for round_index in range(args.rounds + 1):  # round 0 warms up (and decodes) both
            model = copy.deepcopy(loaded.model)
            started = time.perf_counter()
            runner.finetune(model, seed=round_index, epochs=1)
            finetune_rate = len(batches) * args.batch_size / (time.perf_counter() - started)
            raw_rate = raw_loop(copy.deepcopy(loaded.model), inputs, labels, args.batch_size, config.finetune_lr)
            if round_index:
                finetune_rates.append(finetune_rate)
                raw_rates.append(raw_rate)
    finetune_median, raw_median = statistics.median(finetune_rates), statistics.median(raw_rates)
    print(json.dumps({
        "model": loaded.arch, "batch_size": args.batch_size, "images_per_round": len(batches) * args.batch_size,
        "rounds": args.rounds, "threads": threads,
        "finetune_loop_images_per_s": round(finetune_median, 1), "raw_loop_images_per_s": round(raw_median, 1),
        "ratio": round(finetune_median / raw_median, 3),
        "rounds_finetune": [round(v, 1) for v in finetune_rates], "rounds_raw": [round(v, 1) for v in raw_rates],
    }, indent=1))


if __name__ == "__main__":
    main()
