"""Generate the command reference in docs/cli.md from the Typer app itself, so it cannot drift.

Run `python -m agfprune.cli.docgen > docs/cli.md`; a test checks that the file is current.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from agfprune.cli.aliases import DEPRECATED
from agfprune.cli.app import app
from agfprune.core.errors import EXIT_CODES

HEADER = """# agfprune command reference

Generated from the CLI by `python -m agfprune.cli.docgen > docs/cli.md`; do not edit by hand.

## Conventions

- Results go to stdout: a rich table for people, or with `--json` exactly one JSON document. Progress bars
  and status lines go to stderr (`--quiet` silences them).
- `--config FILE.yaml` sets option defaults: top-level keys apply to every command that has such an option,
  a section named after the command (`prune: {ratio: 0.5}`) to that command only; sub-commands nest
  (`route: {calibrate: {threshold: 0.3}}`; plain keys under `route:` apply to every `route` command).
  Unknown keys in a command's own section are an error. Keys are the option names as typed, without the
  dashes (`json: true`, `global: true`, `calib_batches: 8`; `_` and `-` are interchangeable); options given
  on the command line win.
- One spelling per concept: a checkpoint is accepted positionally and as `--checkpoint` by every command
  that reads one; `--calib-batches`/`--calib-batch-size`/`--calib-loss` size and steer statistics collection,
  `--bn-batches` BatchNorm re-estimation, `--batch-size` every other batch (default 128), `--eval-data`/
  `--eval-limit` the images a result is reported on (the same seeded subset `eval --limit` takes).
  `--metric`/`--ratio` take one value, `--metrics`/`--ratios` several. A short flag means the same
  option in every command. Old spellings still work, hidden from `--help`, with a deprecation note on
  stderr (table at the end).
- Bad input never costs a file: options are validated and output locations checked before any model or
  data is loaded, and a refused command creates, changes or deletes nothing. An output that resolves
  (through symlinks, `..` or a hard link) to one of the command's inputs or to another of its outputs is
  refused (exit 2): `prune --out` equal to `--checkpoint`, `finetune --log` equal to `--out`, and so on.
- Input files are opened only when they are regular files (a named pipe, device or socket is refused,
  never waited on); YAML (`--config`, `router.yaml`) is read without aliases (`*name`), and files larger
  than agfprune's own artefacts can be are refused.
- A full disk, a file size limit or a file name longer than the filesystem allows is exit 6; the previous
  file under the target name is left as it was. File names that are not UTF-8 are kept byte for byte.
- An image that cannot be decoded (empty, truncated, not an image, a dangling symlink, a named pipe, more
  pixels than PIL's decompression-bomb limit) is exit 3 naming the file; `--skip-bad-images` decodes every
  image once up front and leaves the unreadable ones out (`eval` and `calibrate` report `skipped_images`).
  Symlinked folders are followed, each real folder once.
- Ctrl-C arriving after the results were printed still exits 130. A process started with SIGINT ignored
  (a background job of a non-interactive shell, `nohup`) keeps ignoring it, as its parent asked.
- Every file a command writes is written to a hidden temporary name in the target folder
  (`.NAME.PID.XXXXXXXX.tmp`) and renamed when complete, so the target name only ever holds a complete
  file. Ctrl-C (exit 130) and SIGTERM (exit 143) remove the temporary file and leave the previous file (if
  any); a SIGKILL or power loss during a write can leave the temporary file, which the next write of the
  same target removes once its process is gone.
- Errors print one line, `agfprune: error: <what is wrong and what would be valid>`, on stderr; `--debug`
  (before the command: `agfprune --debug eval ...`) also prints the traceback.
- NaN/Inf stops a command instead of producing a result: a loss or statistics in `calibrate` (naming the
  batch), a training loss or gradients in `finetune` (naming the step), scores in `prune`, an export that
  does not reproduce PyTorch within 1e-4.

## File formats

Every artefact records a format name and version, and the fingerprint (SHA-256 prefix of the weights) of
the model it was made from or for; readers check both and explain a mismatch (exit 4). Each reader checks
every field it uses against its format's schema (`agfprune/core/formats.py`) before acting on it: a
damaged or hand-edited file is exit 4 naming the field (`field 'metrics.agf.groups[3].scores' must be a
list of numbers`). Checkpoint metadata is sealed by `metadata_fingerprint` (a hash of every other metadata
entry, including the tensors' `fingerprint`); `timm_kwargs` may hold only keys agfprune passes to timm
(no `pretrained`, `checkpoint_path`...), each size bounded (e.g. `depth` ≤ 256, `img_size` ≤ 4096), and a
model over 2·10⁹ parameters is refused before it is built. Checkpoints are
read without executing code: safetensors, or `.pth/.pt/.th/.bin/.ckpt` with `torch.load(weights_only=True)`;
a pickle that needs code to load is refused (exit 4).

| artefact | written by | format (version key) | integrity check | reference |
|---|---|---|---|---|
| checkpoint (dense, pruned, finetuned best/last) `.safetensors` | `prune`, `finetune`, `export --format safetensors` | `agfprune-checkpoint` (`format_version` 1) | `fingerprint` of the tensors and `metadata_fingerprint` of the metadata, verified on every read (a modified file is refused); pruned ones record `structure` and the pruning record with `base_fingerprint`, finetuned ones a `finetune` entry with the source fingerprint | [pruning.md](pruning.md), [finetune.md](finetune.md) |
| calibration `.safetensors` | `calibrate` | `agfprune-calibration` (`format_version` 1) | `fingerprint` of the calibrated weights: `score` and `prune --calib` refuse it for other weights | [scores-schema.md](scores-schema.md) |
| scores `.json` | `score` | `agfprune-scores` (`version` 1) | `model.fingerprint`: `prune --scores` refuses other weights, groups that do not fit, and missing or non-finite scores | [scores-schema.md](scores-schema.md) |
| finetune state `NAME.state.pt` | `finetune` | `agfprune-finetune-state` (`version` 2), tensors and plain values only | `run_fingerprint` (source weights + recipe): `--resume` refuses another run's state, and a state of another version | [finetune.md](finetune.md) |
| finetune log `NAME.log.jsonl` | `finetune` | one JSON object per epoch (epoch 0 = before training) | rewritten whole after each epoch | [finetune.md](finetune.md) |
| router `router.yaml` | `route calibrate` | `agfprune-router` (`format_version` 1) | both experts' fingerprints, re-checked by `route eval`, `route export` and `agfprune.load_router()` | [routing.md](routing.md) |
| exports `.onnx`, TorchScript `.pt` | `export` | `agfprune-export` (`format_version` 1) in ONNX `metadata_props` or the TorchScript extra file `agfprune.json` | `source_fingerprint`; verified against PyTorch (max abs diff 1e-4) before the file is written | [export.md](export.md) |
| Cascade TorchScript `.pt` | `route export` | `agfprune-export` (`format_version` 1) in `agfprune.json` | `light_fingerprint`, `heavy_fingerprint`, signal and threshold; checked against the eager Cascade | [routing.md](routing.md) |
| route reports `--sweep` `.json`, `--plot` `.png` | `route eval` | the threshold sweep with both costs; a plot | written atomically | [routing.md](routing.md) |
| compare results `DIR/results.json`, `results.md`, `accuracy.png`, `timings.json`, `cells/*.json` | `compare` | `agfprune-compare` (`format_version` 3) | `fingerprint` of the model; a cell is reused only when its `settings_key` (weights fingerprint + settings) matches | [results.md](results.md) |

## Exit codes

| code | class | meaning |
|---|---|---|
"""

CODE_MEANING = {
    "ok": "success",
    "internal": "an unexpected internal error (a bug: please report it with `--debug` output)",
    "usage": "invalid option value, unknown name (model, metric, signal), conflicting options",
    "data": "data missing, empty, unreadable, or not matching the model (labels, classes)",
    "model": "model name, checkpoint or artefact unknown, corrupt, tampered, or made for another model",
    "numerical": "NaN/Inf in a loss, statistics or scores; a target that cannot be reached numerically",
    "output": "an output file cannot be written (permissions, disk full, a folder in the way)",
    "interrupted": "Ctrl-C (SIGINT); SIGTERM exits 143 (128 + 15). The previous file is kept, no partial file is left",
}


def _param_rows(command: Any) -> list[str]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        names = ", ".join(f"`{opt}`" for opt in [*param.opts, *getattr(param, "secondary_opts", [])])
        if param.param_type_name == "argument":
            label = (getattr(param, 'metavar', None) or param.name or '').upper()
            names = f"`{label}` (argument)"
        default = param.default
        shown = "" if default is None or callable(default) or param.param_type_name == "argument" else f"`{default}`"
        help_text = (getattr(param, "help", "") or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {names} | {shown} | {help_text} |")
    return rows


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            found.extend(_commands(command, path))
        else:
            found.append((path, command))
    return found


def render() -> str:
    """The whole docs/cli.md text."""
    root = typer.main.get_command(app)
    lines = [HEADER.rstrip("\n")]
    for key, code in EXIT_CODES.items():
        lines.append(f"| {code} | {key} | {CODE_MEANING[key]} |")
    lines.append("")
    lines.append("## Commands")
    for path, command in _commands(root, "agfprune"):
        lines.append("")
        lines.append(f"### `{path}`")
        lines.append("")
        lines.append((command.help or "").strip().split("\n\n")[0].replace("\n", " "))
        lines.append("")
        lines.append("| option | default | meaning |")
        lines.append("|---|---|---|")
        lines.extend(_param_rows(command))
    lines.append("")
    lines.append("## Deprecated spellings")
    lines.append("")
    lines.append("Still accepted on the command line and as `--config` keys, with a note on stderr.")
    lines.append("")
    lines.append("| command | old | use |")
    lines.append("|---|---|---|")
    for command_path, table in DEPRECATED.items():
        for old, new in table.items():
            lines.append(f"| `agfprune {' '.join(command_path)}` | `{old}` | `{new}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
