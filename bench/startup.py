"""Start-up: wall time of `agfprune info` and of every command's `--help` against `import torch`.

Each round runs, in fresh processes and in this order, `python -c "import torch"`, `agfprune info
CHECKPOINT --json` and `agfprune COMMAND --help` for every command; rounds are interleaved so that
load drifts on a shared machine hit all alike. Prints one JSON document with the medians and the
ratio median(info) / median(import torch) (target ≤ 1.6).

    python bench/startup.py --checkpoint ../shared/models/resnet56-cifar10-jpeg.safetensors --rounds 7
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

COMMANDS = ["demo", "info", "eval", "calibrate", "score", "prune", "finetune", "export", "compare",
            "route calibrate", "route eval", "route export"]


def _seconds(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="../shared/models/resnet56-cifar10-jpeg.safetensors")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    agfprune = [sys.executable, "-m", "agfprune"]
    times: dict[str, list[float]] = {"import torch": [], "info": []}
    times.update({f"{command} --help": [] for command in COMMANDS})
    _seconds([sys.executable, "-c", "import torch"], env)  # warm the file cache once
    for _ in range(args.rounds):
        times["import torch"].append(_seconds([sys.executable, "-c", "import torch"], env))
        times["info"].append(_seconds([*agfprune, "info", args.checkpoint, "--json"], env))
        for command in COMMANDS:
            times[f"{command} --help"].append(_seconds([*agfprune, *command.split(), "--help"], env))
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    torch_s = medians["import torch"]
    print(json.dumps({
        "checkpoint": args.checkpoint, "rounds": args.rounds, "python": sys.version.split()[0],
        "median_seconds": medians,
        "ratio_info_over_import_torch": round(medians["info"] / torch_s, 3),
        "max_ratio_help_over_import_torch": round(max(v for k, v in medians.items() if k.endswith("--help")) / torch_s, 3),
        "seconds": {name: [round(v, 3) for v in values] for name, values in times.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
