"""Options shared by many commands, declared once (Typer reads them from the signatures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from agfprune.core.errors import UsageError, first_line


def _command_path(ctx: typer.Context) -> list[str]:
    """Names of the (sub)commands below the root: ['prune'], or ['route', 'calibrate'] for a sub-app."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return names[::-1]


def config_keys(command: Any) -> dict[str, str]:
    """--config key -> parameter: each option's long name as typed, without dashes (`json`, `global`,
    `calib_batches`); `-` and `_` are interchangeable."""
    keys: dict[str, str] = {}
    for param in command.params:
        longs = [opt for opt in getattr(param, "opts", []) if opt.startswith("--")]
        if param.name and longs and param.name != "config":
            keys[longs[0][2:].replace("-", "_")] = param.name
    return keys


def _deprecated_keys(command: Any, path: list[str], keys: dict[str, str]) -> dict[str, str]:
    """Old key -> current key: renamed options, and the internal names that used to leak
    (`json_output`, `global_pruning`)."""
    from agfprune.cli.aliases import deprecated_config_keys

    old = {name: key for key, name in keys.items() if name != key and name not in keys}
    old.update({k: v for k, v in deprecated_config_keys(path).items() if v in keys})
    return old


def _load_config(ctx: typer.Context, param: Any, value: Optional[Path]) -> Optional[Path]:
    """Eager: read a YAML file whose keys are the option names, and make them the defaults.

    Top-level plain keys apply to every command that has such an option; the section named after
    the command (`prune:`, or nested for a sub-app: `route: {calibrate: ...}`) applies to it only and
    must name its options. Plain keys of an enclosing section (`route: {device: cpu}`) apply to all
    commands of that sub-app.
    """
    if value is None or ctx.resilient_parsing:
        return value
    import yaml

    from agfprune.cli.aliases import note
    from agfprune.core.formats import load_yaml, read_text

    text = read_text(value, "--config file", UsageError, limit=1 << 20)
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"--config {value}: not valid YAML ({first_line(exc)})") from None
    except RecursionError:  # thousands of nested brackets
        raise UsageError(f"--config {value}: not valid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {value}: expected a mapping of option names to values")
    path = _command_path(ctx)
    label = " ".join(path)
    keys = config_keys(ctx.command)
    old_keys = _deprecated_keys(ctx.command, path, keys)

    def canonical(key: Any, strict: bool) -> str | None:
        key = str(key).replace("-", "_")
        if key in old_keys:
            if strict:
                note(f"--config key {key!r} is deprecated, use {old_keys[key]!r} (agfprune {label})")
            key = old_keys[key]
        return key if key in keys else None

    def plain(section: dict) -> dict[str, Any]:
        return {k: v for k, v in section.items() if not isinstance(v, dict)}

    shared = plain(data)
    section: Any = data
    for depth, name in enumerate(path):
        section = section.get(name) if isinstance(section, dict) else None
        if section is None:
            section = {}
            break
        if not isinstance(section, dict):
            where = ": ".join(path[: depth + 1])
            raise UsageError(f"--config {value}: section {where} must be a mapping of option names to values")
        if depth < len(path) - 1:
            shared.update(plain(section))  # e.g. route: {device: cpu} for every route command
    unknown = sorted(str(k) for k in section if canonical(k, strict=False) is None)
    if unknown:
        raise UsageError(f"--config {value}: unknown option(s) for {label}: {', '.join(unknown)} "
                         f"(valid: {', '.join(sorted(keys))})")
    defaults: dict[str, Any] = {}
    for key, item in shared.items():
        found = canonical(key, strict=False)
        if found is not None:
            defaults[keys[found]] = item
    for key, item in section.items():
        defaults[keys[canonical(key, strict=True)]] = item  # type: ignore[index]
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", is_eager=True, callback=_load_config, metavar="FILE.yaml",
    help="YAML file of option defaults; keys are the option names without dashes (json: true, calib_batches: 8), "
         "top-level or in a section named after the command (nested for sub-commands: route: {calibrate: {...}}).")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="timm model name (e.g. resnet18, cifar_resnet56); optional when the checkpoint records it.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", help="Weights: .safetensors, or .pth/.pt/.th loaded with weights_only=True.")]
CheckpointArg = Annotated[Optional[Path], typer.Argument(
    metavar="[CHECKPOINT]", show_default=False, help="Checkpoint to read (same as --checkpoint).")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="Ask timm for hub weights (needs network).")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", "-d", help="(required) ImageFolder root (class folders, or train/ and val/), .npz (images, labels), or synthetic:N.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling and initialisation.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")]
DEFAULT_BATCH_SIZE = 128  # evaluation, finetuning, routing: one default wherever a batch is just a batch
DEFAULT_CALIB_BATCHES, DEFAULT_CALIB_BATCH_SIZE, DEFAULT_LATENCY_REPEATS = 16, 64, 10
CalibBatchesOpt = Annotated[int, typer.Option(
    "--calib-batches", "-n", help="Calibration batches (forward+backward passes) per scoring step.")]
CalibBatchSizeOpt = Annotated[int, typer.Option("--calib-batch-size", help="Images per calibration batch.")]
CalibLossOpt = Annotated[str, typer.Option(
    "--calib-loss", help="Calibration loss: labels (cross-entropy on the data's labels) or self (against the "
                         "model's own top-1 prediction; for unlabelled images).")]
BnBatchesOpt = Annotated[Optional[int], typer.Option(
    "--bn-batches", help="Batches to re-estimate BatchNorm statistics on after pruning (default: --calib-batches "
                         "when data is given; 0 turns it off).")]
EvalLimitOpt = Annotated[Optional[int], typer.Option(
    "--eval-limit", help="Evaluate on a seeded random subset of N images (the same subset `eval --limit N` uses "
                         "with the same --seed).")]
LatencyRepeatsOpt = Annotated[int, typer.Option(
    "--latency-repeats", help="Timed passes for latency (median and spread reported); 0 skips timing.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Use a seeded random subset of N images.")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", help="Override the input size (pixels).")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Override normalisation mean, e.g. 0.5,0.5,0.5.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Override normalisation std, e.g. 0.5,0.5,0.5.")]
SkipBadImagesOpt = Annotated[bool, typer.Option(
    "--skip-bad-images", help="Leave out (and count) image files that cannot be decoded, instead of stopping "
                              "with exit 3; every image is decoded once up front to find them.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines on stderr.")]
AmpOpt = Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA (bf16 where supported; "
                                                             "ignored on CPU).")]


def parse_floats(text: Optional[str], option: str) -> Optional[tuple[float, ...]]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5), with a one-line error on bad input."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated numbers") from None


def checkpoint_of(positional: Optional[Path], option: Optional[Path]) -> Optional[Path]:
    """The checkpoint, given positionally or as --checkpoint (not two different ones)."""
    if positional is not None and option is not None and Path(positional) != Path(option):
        raise UsageError(f"two checkpoints given: {positional} (positional) and --checkpoint {option}; give one")
    return positional if positional is not None else option


def require(value: Any, option: str) -> Any:
    """A required option that may also come from --config (so it cannot be a Typer-required one)."""
    if value is None:
        raise UsageError(f"missing option {option}")
    return value
