"""`agfprune prune` at ImageNet scale: wall time and peak memory on random timm models at 224 px.

For each architecture (random weights, 10 classes, saved as a checkpoint first) this runs, each in a
fresh process, the whole command `agfprune prune --metric agf --data synthetic:N --calib-batches B
--batch-size S --ratio 0.5` (start-up, graph, calibration, scoring, pruning, BN recalibration,
checkpoint write and verification) and a plain forward+backward over B random batches of S images
at the same size (the compute calibration cannot avoid). Prints one JSON document: seconds and
peak RSS (ru_maxrss of the child) of both, and their ratios.

    python bench/prune_scale.py --archs resnet50 vit_small_patch16_224 --calib-batches 2 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Seconds, peak RSS (MiB) and stdout of a child process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # ru_maxrss of exactly this child
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        process.returncode = code
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv[:6])} … failed ({code}): {err.read()[-2000:]}")
        out.seek(0)
        return seconds, usage.ru_maxrss / 1024, out.read()


def _ratio(after: object, before: object) -> float | None:
    return round(after / before, 4) if isinstance(after, (int, float)) and isinstance(before, (int, float)) and before else None


def _plain_worker(args: argparse.Namespace) -> None:
    """Forward+backward over random batches (model in eval mode, as calibration runs it)."""
    import torch
    import torch.nn.functional as F

    from agfprune.core.models import load_model

    torch.manual_seed(0)
    loaded = load_model(checkpoint=args.checkpoint)
    model = loaded.model.eval()
    started = time.perf_counter()
    for _ in range(args.calib_batches):
        images = torch.randn(args.batch_size, *loaded.input_size)
        labels = torch.randint(0, loaded.num_classes, (args.batch_size,))
        F.cross_entropy(model(images), labels).backward()
    print(json.dumps({"seconds": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet50", "vit_small_patch16_224"])
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP threads of both child processes (0: torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _plain_worker(args)
        return
    import torch

    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.models import load_model

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    report: dict[str, object] = {"calib_batches": args.calib_batches, "batch_size": args.batch_size,
                                 "ratio": args.ratio, "device": args.device,
                                 "threads": args.threads or torch.get_num_threads(), "archs": {}}
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            torch.manual_seed(0)
            loaded = load_model(arch, timm_kwargs={"num_classes": 10})
            checkpoint = Path(folder) / f"{arch}.safetensors"
            write_checkpoint(checkpoint, loaded.model, arch=arch, timm_kwargs=loaded.timm_kwargs,
                             data_config=loaded.data_config)
            del loaded
            images = args.calib_batches * args.batch_size
            prune_s, prune_mib, out = _run(
                [sys.executable, "-m", "agfprune", "prune", "--checkpoint", str(checkpoint), "--metric", "agf",
                 "--data", f"synthetic:{images}", "--calib-batches", str(args.calib_batches),
                 "--batch-size", str(args.batch_size), "--ratio", str(args.ratio), "--device", args.device,
                 "--out", str(Path(folder) / f"{arch}-pruned.safetensors"), "--json", "--quiet"], env)
            summary = json.loads(out)
            plain_s, plain_mib, out = _run([sys.executable, __file__, "--worker", "--checkpoint", str(checkpoint),
                                            "--calib-batches", str(args.calib_batches),
                                            "--batch-size", str(args.batch_size)], env)
            plain_compute_s = json.loads(out)["seconds"]
            report["archs"][arch] = {  # type: ignore[index]
                "prune_seconds": round(prune_s, 2), "prune_peak_rss_mib": round(prune_mib),
                "plain_forward_backward_seconds": round(plain_compute_s, 2),
                "plain_process_seconds": round(plain_s, 2), "plain_peak_rss_mib": round(plain_mib),
                "ratio_prune_over_plain_process_time": round(prune_s / plain_s, 3),
                "ratio_prune_over_plain_peak_rss": round(prune_mib / plain_mib, 3),
                "params_ratio": _ratio(summary.get("params_after"), summary.get("params_before")),
                "macs_ratio": _ratio(summary.get("macs_after"), summary.get("macs_before")),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
