"""Content hashes that tie artefacts (calibration, scores, routers) to the weights they came from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

METADATA_FINGERPRINT_KEY = "metadata_fingerprint"


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (first 16 hex digits) over names, dtypes, shapes and bytes of a state dict.

    Independent of device and of key order; any change to any weight or buffer changes it.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def metadata_fingerprint(encoded: Mapping[str, str]) -> str:
    """SHA-256 (first 16 hex digits) over a checkpoint's stored metadata strings (all keys but
    `metadata_fingerprint` itself). The metadata holds the tensors' fingerprint too, so this one
    covers the whole file: architecture, kwargs, structure and weights."""
    digest = hashlib.sha256()
    for key in sorted(encoded):
        if key != METADATA_FINGERPRINT_KEY:
            digest.update(json.dumps([key, encoded[key]]).encode())
    return digest.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a module's current state dict."""
    return state_fingerprint(model.state_dict())
