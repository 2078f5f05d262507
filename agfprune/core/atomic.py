"""Atomic file output: write to a temporary name beside the target, then rename.

A crash, Ctrl-C or full disk then leaves either the previous file or the complete new one,
never a half-written artefact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agfprune.core.errors import OutputError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` on success.

    `suffix` lets writers that look at file extensions (ONNX, safetensors readers) use the temp file.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
        os.close(handle)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `target` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def check_writable(target: str | os.PathLike[str]) -> None:
    """Fail early, before expensive work, when the output location cannot be written."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    probe_root = folder
    while not probe_root.exists():
        probe_root = probe_root.parent
    if not os.access(probe_root, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: folder {probe_root} is not writable")
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder")
