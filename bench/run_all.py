"""Every figure of docs/performance.md in one command: runs each bench/ script, prints the table.

    python bench/run_all.py                      # CPU, real models and data from ../shared
    python bench/run_all.py --device cuda        # a GPU machine: AMP, channels_last, NCCL paths

Each script prints one JSON document with ratios measured within its own run (interleaved where
timing); this driver collects them into one JSON file (--out) and a markdown table on stdout.
Without ../shared (e.g. on a fresh GPU machine) it uses random-weight models and synthetic data, so
the ratios stay meaningful though the accuracies are not. On CUDA with two or more GPUs it also runs
`torchrun -m agfprune calibrate` over NCCL and checks the file against a single-process run.
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
BENCH = REPO / "bench"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _json(argv: list[str]) -> dict:
    """Run a bench script (or agfprune) and parse the JSON document it prints."""
    started = time.perf_counter()
    print(f"[run_all] {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, *argv[1:]] if argv[0] == "python" else argv, env=_env(),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[run_all] failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
    print(f"[run_all]   {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(done.stdout[done.stdout.index("{"):])


def _random_inputs(folder: Path) -> tuple[dict[str, Path], str]:
    """Random-weight stand-ins for the shared checkpoints, and synthetic data."""
    import torch

    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.models import load_model

    checkpoints = {}
    for name, arch, kwargs in (("resnet56", "cifar_resnet56", {}),
                               ("vit", "vit_tiny_patch16_224", dict(img_size=32, patch_size=4, embed_dim=128,
                                                                    depth=6, num_heads=4, num_classes=10))):
        torch.manual_seed(0)
        loaded = load_model(arch, timm_kwargs=kwargs)
        checkpoints[name] = folder / f"{name}.safetensors"
        write_checkpoint(checkpoints[name], loaded.model, arch=arch, timm_kwargs=loaded.timm_kwargs,
                         data_config=loaded.data_config)
    return checkpoints, "synthetic:4096"


def _torchrun_nccl(checkpoint: Path, data: str, folder: Path) -> dict:
    """NCCL calibration on every GPU vs one process: the files must agree up to summation order."""
    import torch

    from agfprune.core.calibration import load_calibration

    gpus = torch.cuda.device_count()
    common = ["-m", "agfprune", "calibrate", "--checkpoint", str(checkpoint), "--data", data, "--batches",
              str(2 * gpus), "--batch-size", "64", "--device", "cuda", "--amp", "--json", "--quiet"]
    single = _json(["python", *common, "--out", str(folder / "one.safetensors")])
    multi = _json(["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
                   *common, "--out", str(folder / "many.safetensors")])
    one, many = load_calibration(folder / "one.safetensors"), load_calibration(folder / "many.safetensors")
    worst = 0.0
    for kind in ("out_abs", "out_taylor", "in_abs", "in_taylor", "in_sq", "grad"):
        for name, value in getattr(one, kind).items():
            other = getattr(many, kind)[name]
            worst = max(worst, float(((other - value).abs() / value.abs().clamp_min(1e-12)).max()))
    return {"processes": gpus, "single_seconds": single["seconds"], "torchrun_seconds": multi["seconds"],
            "ratio_torchrun_over_single_time": round(multi["seconds"] / single["seconds"], 3),
            "max_relative_difference": worst, "counts_equal": one.counts == many.counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=None, help="also write every result as JSON here")
    parser.add_argument("--only", nargs="*", default=None,
                        help="subset: startup calibration prune_scale latency finetune nccl")
    args = parser.parse_args()
    wanted = set(args.only or ["startup", "calibration", "prune_scale", "latency", "finetune", "nccl"])
    results: dict[str, object] = {"device": args.device}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        models = args.shared / "models"
        if (models / "resnet56-cifar10-jpeg.safetensors").is_file() and (args.shared / "data").is_dir():
            checkpoints = {"resnet56": models / "resnet56-cifar10-jpeg.safetensors",
                           "vit": models / "vit-small6-cifar10-jpeg.safetensors"}
            data = str(args.shared / "data" / "cifar10-jpeg")
            results["inputs"] = "shared (real checkpoints, CIFAR-10 JPEG)"
        else:
            checkpoints, data = _random_inputs(folder)
            results["inputs"] = "random weights, synthetic data (../shared not found)"
        device = ["--device", args.device]
        if "startup" in wanted:
            results["startup"] = _json(["python", str(BENCH / "startup.py"), "--checkpoint",
                                        str(checkpoints["resnet56"]), "--rounds", "5"])
        if "calibration" in wanted:
            results["calibration"] = {
                name: _json(["python", str(BENCH / "calibration_overhead.py"), "--checkpoint", str(path),
                             "--data", data, "--batches", "8", "--batch-size", "64",
                             "--micro-batch", "16", "--repeats", "3", *device])
                for name, path in checkpoints.items()}
        if "prune_scale" in wanted:
            results["prune_scale"] = _json(["python", str(BENCH / "prune_scale.py"), "--calib-batches", "2",
                                            "--batch-size", "64" if args.device == "cuda" else "16", *device])
        if "latency" in wanted:
            results["latency"] = _json(["python", str(BENCH / "prune_latency.py"), "--archs", "--checkpoint",
                                        *map(str, checkpoints.values()), "--ratios", "0.5",
                                        "--batch-sizes", "1", "128", "--threads", "1", *device])
        if "finetune" in wanted:
            results["finetune"] = _json(["python", str(BENCH / "finetune_throughput.py"), "--checkpoint",
                                         str(checkpoints["resnet56"]), "--data", data, "--limit", "1024",
                                         "--batch-size", "64", *device])
        if "nccl" in wanted and args.device == "cuda":
            import torch

            if torch.cuda.device_count() >= 2:
                results["nccl"] = _torchrun_nccl(checkpoints["resnet56"], data, folder)
            else:
                results["nccl"] = {"skipped": f"{torch.cuda.device_count()} GPU (NCCL needs two ranks on two GPUs)"}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(render_table(results))


def _spread(values: list[float] | None) -> str:
    """'blocks 1.71–1.80; ' from the per-block values of a figure, or '' without them."""
    return f"blocks {min(values):.2f}–{max(values):.2f}; " if values else ""


def render_table(results: dict) -> str:
    """The performance table (markdown) from the collected results."""
    rows = [("figure", "measured", "target")]
    startup = results.get("startup")
    if startup:
        rows.append(("`agfprune info` (ResNet-56) / `python -c \"import torch\"`, median wall time",
                     f"{startup['ratio_info_over_import_torch']:.2f}× ({startup['median_seconds']['info']:.2f} s / "
                     f"{startup['median_seconds']['import torch']:.2f} s)", "≤ 1.6×"))
        rows.append(("slowest `COMMAND --help` / `import torch`",
                     f"{startup['max_ratio_help_over_import_torch']:.2f}×", "fast"))
    for name, calib in (results.get("calibration") or {}).items():
        rows.append((f"calibrate time / plain forward+backward ({calib['model']}, {calib['batches']}×"
                     f"{calib['batch_size']})", f"{calib['ratio_calibrate_over_plain']:.2f}× (CPU time "
                     f"{calib['ratio_cpu_time_calibrate_over_plain']:.2f}×)", "≤ 1.10×"))
        rows.append((f"calibrate peak memory / plain step ({calib['model']})",
                     f"{calib['ratio_peak_memory_calibrate_over_plain']:.2f}×", "≤ 1.2×"))
        if "ratio_peak_memory_calibrate_micro_over_plain" in calib:
            rows.append((f"calibrate --micro-batch 16 peak memory / plain step ({calib['model']})",
                         f"{calib['ratio_peak_memory_calibrate_micro_over_plain']:.2f}×", "< 1×"))
    scale = results.get("prune_scale")
    if scale:
        for arch, row in scale["archs"].items():
            rows.append((f"`prune` wall time, {arch} 224 px, {scale['calib_batches']}×{scale['batch_size']} "
                         f"calibration", f"{row['prune_seconds']:.0f} s = {row['ratio_prune_over_plain_process_time']:.2f}× "
                         f"a plain fwd+bwd process; peak {row['prune_peak_rss_mib'] / 1024:.1f} GiB = "
                         f"{row['ratio_prune_over_plain_peak_rss']:.2f}× its", "minutes, not hours"))
    for row in (results.get("latency") or {}).get("latency", []):
        rows.append((f"pruned/dense speed-up, {row['model']} ratio {row['ratio']}, {row['runtime']}, batch "
                     f"{row['batch_size']}, {row['threads']} thread", f"{row['speedup']:.2f}× "
                     f"({_spread(row.get('speedup_blocks'))}MACs ×{row['macs_ratio']:.3f} "
                     f"→ ideal {1 / row['macs_ratio']:.2f}×)", "report"))
    finetune = results.get("finetune")
    if finetune:
        rows.append(("finetune images/s / raw training loop", f"{finetune['ratio_finetune_over_raw']:.2f}× "
                     f"({finetune['median_finetune']:.0f} vs {finetune['median_raw']:.0f} img/s)", "≥ 0.9×"))
    nccl = results.get("nccl")
    if nccl:
        rows.append(("torchrun NCCL calibration vs one process", json.dumps(nccl), "equal up to float order"))
    lines = [f"| {' | '.join(rows[0])} |", "|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows[1:]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
