"""Exported ONNX files as models: an nn.Module over an onnxruntime session.

Users ship the exported file, so `eval` must be able to measure that file in the runtime that will
run it. Wrapping the session in a parameterless nn.Module lets every evaluation helper (accuracy,
latency) treat it like a PyTorch model; the provenance `agfprune export` recorded in the file
(architecture, weights fingerprint, data config, params, MACs) stands in for what a checkpoint says.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from agfprune.core.errors import ModelError, UsageError, first_line

ONNX_SUFFIX = ".onnx"
# timm's defaults (timm.data.constants), for ONNX files that record no data config of their own
DEFAULT_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875, "crop_mode": "center",
}


def is_onnx(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ONNX_SUFFIX


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("evaluating an .onnx file needs onnxruntime, which is not installed; "
                         "install the optional extra: pip install 'agfprune[export]'") from None
    return onnxruntime


class OnnxModule(nn.Module):
    """Runs an ONNX model in onnxruntime; takes and returns torch tensors (CPU float32 input)."""

    def __init__(self, path: str | Path, threads: int = 0, device: torch.device | None = None) -> None:
        super().__init__()
        onnxruntime = require_onnxruntime()
        options = onnxruntime.SessionOptions()
        if threads > 0:  # 0 keeps onnxruntime's default (one thread per physical core)
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise UsageError(f"--device {device}: this onnxruntime has no CUDA provider "
                                 "(install onnxruntime-gpu, or use --device cpu)")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"{path}: onnxruntime cannot load it ({first_line(exc, 200)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.threads = threads
        self.path = Path(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def static_input_size(self) -> tuple[int, ...] | None:
        """(C, H, W) when the graph fixes them, else None."""
        shape = self.session.get_inputs()[0].shape[1:]
        return tuple(int(d) for d in shape) if shape and all(isinstance(d, int) for d in shape) else None


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "file-sha256:" + digest.hexdigest()[:16]


def load_onnx_model(path: str | Path, threads: int = 0, device: torch.device | None = None) -> Any:
    """A LoadedModel whose `.model` runs `path` in onnxruntime (data config from the file's metadata,
    else its static input shape and timm's defaults)."""
    from agfprune.core.checkpoint import decode_metadata
    from agfprune.core.models import LoadedModel

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}")
    module = OnnxModule(path, threads, device)
    metadata = decode_metadata(dict(module.session.get_modelmeta().custom_metadata_map))
    data_config = dict(DEFAULT_DATA_CONFIG)
    recorded = metadata.get("data_config")
    if isinstance(recorded, dict):
        data_config.update({k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    input_size = metadata.get("input_size") or module.static_input_size() or data_config["input_size"]
    data_config["input_size"] = tuple(int(v) for v in input_size)
    return LoadedModel(
        model=module,
        arch=str(metadata.get("arch") or path.stem),
        timm_kwargs={},
        data_config=data_config,
        fingerprint=str(metadata.get("source_fingerprint") or _file_fingerprint(path)),
        checkpoint=path,
        metadata=metadata,
    )
