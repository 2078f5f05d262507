"""Deployable exports (ONNX, TorchScript, safetensors) that check themselves before they land.

Each exporter writes to a temporary file beside the target, runs that file on sample inputs next
to the PyTorch model, and only renames it onto the target when the largest absolute difference
of the logits is within tolerance; otherwise it raises NumericalError and leaves no file.

ONNX and TorchScript files carry their provenance (format `agfprune-export`, version, the source
architecture and weights fingerprint): ONNX as `metadata_props`, TorchScript as the extra file
`agfprune.json`; `read_export_metadata` reads either.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from agfprune.core.atomic import atomic_path, check_outputs
from agfprune.core.errors import ModelError, NumericalError, UsageError
from agfprune.core.models import LoadedModel
from agfprune.core.progress import SILENT, Progress
from agfprune.core.registry import Registry

TOLERANCE = 1e-4
TORCHSCRIPT_MODES = ("trace", "script")
EXPORT_FORMAT = "agfprune-export"
EXPORT_VERSION = 1
EXTRA_FILE = "agfprune.json"  # TorchScript extra file holding the provenance


def export_metadata(arch: str, fingerprint: str, **extra: Any) -> dict[str, str]:
    """Provenance stored inside ONNX/TorchScript exports (string values, as ONNX requires)."""
    from agfprune.core.version import __version__

    fields = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "agfprune_version": __version__,
              "arch": arch, "source_fingerprint": fingerprint, **extra}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The provenance of an ONNX or TorchScript file written by agfprune ({} when it has none)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {prop.key: prop.value for prop in proto.metadata_props}
    files = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[EXTRA_FILE]) if files[EXTRA_FILE] else {}


@dataclass
class ExportReport:
    """Where the export went and how closely it reproduces PyTorch."""

    format: str
    path: str
    arch: str
    fingerprint: str
    max_abs_diff: float
    tolerance: float
    batch_sizes: list[int]
    bytes: int
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_inputs(input_size: tuple[int, ...], batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Seeded normal inputs at the export batch size (at least 2: a batch of 1 would be specialised
    by torch.export), at 1 and at one more, to exercise a dynamic batch axis."""
    generator = torch.Generator().manual_seed(seed)
    sizes = sorted({1, max(2, batch_size), batch_size + 1})
    return [torch.randn(size, *input_size, generator=generator) for size in sizes]


def _max_abs_diff(reference: list[torch.Tensor], produced: list[torch.Tensor]) -> float:
    worst = 0.0
    for expected, actual in zip(reference, produced):
        actual = torch.as_tensor(actual).float()
        if actual.shape != expected.shape:
            raise NumericalError(f"exported model returned shape {tuple(actual.shape)}, "
                                 f"PyTorch {tuple(expected.shape)}")
        worst = max(worst, float((actual - expected).abs().max()))
    return worst


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--format onnx needs {module}, which is not installed; "
                         "install the optional extra: pip install 'agfprune[export]'") from None


Runner = Callable[[torch.Tensor], torch.Tensor]  # runs the written file on a batch
Writer = Callable[[LoadedModel, nn.Module, torch.Tensor, Path, dict[str, Any], Progress], tuple[Runner, dict[str, Any]]]


@dataclass(frozen=True)
class ExportFormat:
    """An export format: the file suffix its temporary file gets, and the function that writes it
    there and returns (a function running the written file, details for the report)."""

    suffix: str
    write: Writer


FORMATS: Registry[ExportFormat] = Registry("export format", "--format {name!r}: expected one of {valid}")


def register_format(name: str, suffix: str) -> Callable[[Writer], Writer]:
    """Decorator: make `write(loaded, model, example, tmp, options, progress)` the exporter of `name`."""
    return FORMATS.decorator(name, lambda write: ExportFormat(suffix, write))


@register_format("onnx", ".onnx")
def _export_onnx(loaded_model: LoadedModel, model: nn.Module, example: torch.Tensor, tmp: Path,
                 options: dict[str, Any], progress: Progress) -> tuple[Runner, dict[str, Any]]:
    onnx = _require("onnx")
    onnxruntime = _require("onnxruntime")
    opset = options.get("opset")
    exporter = "dynamo"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                              opset_version=opset, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))
    except Exception as exc:  # noqa: BLE001 - torch.export fails on some models; the legacy tracer may not
        progress.log(f"ONNX dynamo export failed ({type(exc).__name__}); using the TorchScript-based exporter")
        exporter = "torchscript"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                                  opset_version=opset or 17, dynamo=False,
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as legacy_exc:  # noqa: BLE001
            raise ModelError(f"ONNX export failed: {type(legacy_exc).__name__}: "
                             f"{str(legacy_exc).splitlines()[0][:200] if str(legacy_exc) else ''}") from None
    proto = onnx.load(str(tmp))
    for key, value in options.get("metadata", {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp))
    onnx.checker.check_model(proto)
    used_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: batch.numpy()})[0])

    return run, {"opset": used_opset, "exporter": exporter, "dynamic_batch": True}


@register_format("torchscript", ".pt")
def _export_torchscript(loaded_model: LoadedModel, model: nn.Module, example: torch.Tensor, tmp: Path,
                        options: dict[str, Any], progress: Progress) -> tuple[Runner, dict[str, Any]]:
    mode = options.get("torchscript_mode", "trace")
    if mode not in TORCHSCRIPT_MODES:
        raise UsageError(f"--torchscript-mode {mode!r}: expected trace or script")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.trace(model, example) if mode == "trace" else torch.jit.script(model)
        except Exception as exc:  # noqa: BLE001 - the scripting compiler raises many types
            hint = "; try --torchscript-mode trace" if mode == "script" else ""
            raise ModelError(f"TorchScript {mode} failed: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}{hint}") from None
        extra = {EXTRA_FILE: json.dumps(options.get("metadata", {}), sort_keys=True)}
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    loaded.eval()

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(batch)

    return run, {"torchscript_mode": mode}


@register_format("safetensors", ".safetensors")
def _export_safetensors(loaded_model: LoadedModel, model: nn.Module, example: torch.Tensor, tmp: Path,
                        options: dict[str, Any], progress: Progress) -> tuple[Runner, dict[str, Any]]:
    from agfprune.core.checkpoint import write_checkpoint
    from agfprune.core.models import load_model

    reserved = {"format", "format_version", "agfprune_version", "timm_model", "arch", "timm_kwargs",
                "data_config", "structure", "fingerprint"}
    extra = {k: v for k, v in loaded_model.metadata.items() if k not in reserved}
    write_checkpoint(tmp, loaded_model.model, arch=loaded_model.arch, timm_kwargs=loaded_model.timm_kwargs,
                     data_config=loaded_model.data_config,
                     structure=loaded_model.metadata.get("structure") or {}, extra=extra)
    reloaded = load_model(checkpoint=tmp, device="cpu").model.eval()

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return reloaded(batch)

    return run, {}


def check_export_request(fmt: str, out: str | Path, *, source: str | Path | None = None, batch_size: int = 2,
                         opset: int | None = None,
                         torchscript_mode: str = "trace") -> None:
    """Refuse bad options and an unwritable `out` before any model is loaded."""
    FORMATS.check(fmt)
    if batch_size <= 0:
        raise UsageError(f"--batch-size {batch_size}: must be positive")
    if opset is not None and not 7 <= opset <= 30:
        raise UsageError(f"--opset {opset}: expected an ONNX opset between 7 and 30")
    if fmt == "torchscript" and torchscript_mode not in TORCHSCRIPT_MODES:
        raise UsageError(f"--torchscript-mode {torchscript_mode!r}: expected trace or script")
    if fmt == "onnx":
        _require("onnx"), _require("onnxruntime")
    check_outputs({"--out": out}, {"CHECKPOINT": source})


def export_model(loaded: LoadedModel, fmt: str, out: str | Path, *, batch_size: int = 2,
                 opset: int | None = None, torchscript_mode: str = "trace", tolerance: float = TOLERANCE,
                 seed: int = 0, progress: Progress = SILENT) -> ExportReport:
    """Export `loaded.model` to `out` in `fmt`, verified against PyTorch (max abs diff ≤ tolerance)."""
    check_export_request(fmt, out, source=loaded.checkpoint, batch_size=batch_size, opset=opset,
                         torchscript_mode=torchscript_mode)
    out = Path(out)
    model = loaded.model.to("cpu").float().eval()
    inputs = sample_inputs(tuple(loaded.input_size), batch_size, seed)
    example = next(x for x in inputs if len(x) == max(2, batch_size))
    with torch.no_grad():
        reference = [model(x).float() for x in inputs]
    from agfprune.core.evaluate import count_cost

    cost = count_cost(model, tuple(loaded.input_size))  # so that `eval FILE.onnx` reports them too
    metadata = export_metadata(loaded.arch, loaded.fingerprint, input_size=list(loaded.input_size),
                               pruned=bool(loaded.metadata.get("structure")), data_config=loaded.data_config,
                               params=cost.params, macs=cost.macs)
    export_format = FORMATS[fmt]
    with atomic_path(out, suffix=export_format.suffix) as tmp:
        run, detail = export_format.write(loaded, model, example, tmp, {
            "opset": opset, "torchscript_mode": torchscript_mode, "metadata": metadata}, progress)
        diff = _max_abs_diff(reference, [run(x) for x in inputs])
        if not diff <= tolerance:  # also catches NaN
            raise NumericalError(f"{fmt} export of {loaded.arch} differs from PyTorch by {diff:.3g} "
                                 f"(> {tolerance:g}) on sample inputs; {out} was not written")
        size = tmp.stat().st_size
    return ExportReport(format=fmt, path=str(out), arch=loaded.arch, fingerprint=loaded.fingerprint,
                        max_abs_diff=diff, tolerance=tolerance, batch_sizes=[len(x) for x in inputs],
                        bytes=size, detail=detail)
