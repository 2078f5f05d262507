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


def _load_config(ctx: typer.Context, param: Any, value: Optional[Path]) -> Optional[Path]:
    """Eager: read a YAML file whose keys mirror the options, and make them the defaults.

    Top-level plain keys apply to every command that has such an option; the section named after
    the command (`prune:`, or nested for a sub-app: `route: {calibrate: ...}`) applies to it only and
    must name its options. Plain keys of an enclosing section (`route: {device: cpu}`) apply to all
    commands of that sub-app.
    """
    if value is None or ctx.resilient_parsing:
        return value
    import yaml

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
    valid = {p.name for p in ctx.command.params if p.name}
    path = _command_path(ctx)
    label = " ".join(path)

    def plain(section: dict) -> dict[str, Any]:
        return {str(k).replace("-", "_"): v for k, v in section.items() if not isinstance(v, dict)}

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
    own = {str(k).replace("-", "_"): v for k, v in section.items()}
    unknown = sorted(set(own) - valid)
    if unknown:
        raise UsageError(f"--config {value}: unknown option(s) for {label}: {', '.join(unknown)} "
                         f"(valid: {', '.join(sorted(valid - {'config'}))})")
    defaults = {k: v for k, v in shared.items() if k in valid}
    defaults.update(own)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", is_eager=True, callback=_load_config, metavar="FILE.yaml",
    help="YAML file whose keys mirror the options (top-level keys, or a section named after the command; "
         "nested for sub-commands, e.g. route: {calibrate: {...}}).")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="timm model name (e.g. resnet18, cifar_resnet56); optional when the checkpoint records it.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", help="Weights: .safetensors, or .pth/.pt/.th loaded with weights_only=True.")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="Ask timm for hub weights (needs network).")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", "-d", help="(required) ImageFolder root (class folders, or train/ and val/), .npz (images, labels), or synthetic:N.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling and initialisation.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")]
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
AmpOpt = Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA (ignored on CPU).")]


def parse_floats(text: Optional[str], option: str) -> Optional[tuple[float, ...]]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5), with a one-line error on bad input."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated numbers") from None


def require(value: Any, option: str) -> Any:
    """A required option that may also come from --config (so it cannot be a Typer-required one)."""
    if value is None:
        raise UsageError(f"missing option {option}")
    return value
