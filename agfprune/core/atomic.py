"""Atomic file output: write to a temporary name beside the target, then rename.

A crash, Ctrl-C or full disk then leaves either the previous file or the complete new one,
never a half-written artefact. Temporary files are hidden (`.NAME.PID.XXXXXXXX.tmp`); Ctrl-C and
SIGTERM remove them, and the one a SIGKILL (or power loss) leaves behind is removed by the next
write of the same target, once the process that made it is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agfprune.core.errors import OutputError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files of `target` left by processes that no longer run (e.g. after SIGKILL).

    Only names this module makes (`.NAME.PID.XXXXXXXX<suffix>`) with a dead PID are touched, so a
    concurrent writer's temporary file is never removed. Returns the paths removed.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[A-Za-z0-9_]{{8}}(\..*)?$")
    removed = []
    try:
        candidates = [entry for entry in folder.iterdir() if entry.name.startswith(f".{target.name}.")]
    except OSError:
        return removed
    for entry in candidates:
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or _process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` on success.

    `suffix` lets writers that look at file extensions (ONNX, safetensors readers) use the temp file.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=suffix, dir=folder)
        os.close(handle)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own 0600 one:
        # outputs get the permissions a plain open() would give them
        os.chmod(tmp, 0o666 & ~_umask())
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
    if not probe_root.is_dir():
        raise OutputError(f"cannot write {target}: folder {probe_root} is not writable (it is a file)")
    if not os.access(probe_root, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: folder {probe_root} is not writable")
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder")
