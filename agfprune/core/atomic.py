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
import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from agfprune.core.errors import AgfpruneError, OutputError, UsageError, first_line

# Longest file name most filesystems take (NAME_MAX); temporary names must stay within it too.
NAME_MAX = 255
# How writers that wrap the OS error (safetensors, torch.save's zip writer) say the same.
_OUTPUT_MESSAGES = ("No space left", "StorageFull", "Disk quota", "File too large", "FileTooLarge",
                    "file write failed", "Read-only file system")


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


def _temporary_prefix(name: str) -> str:
    """`.NAME.` for the temporary files of NAME; for a long NAME (the temporary name must fit in
    NAME_MAX too) or one that is not UTF-8 (writers such as safetensors would write another name), an
    ASCII-safe shortened NAME plus a hash of the whole name."""
    raw = name.encode("utf-8", "surrogateescape")
    room = NAME_MAX - len(".") - len(".4194304.XXXXXXXX.") - 16  # pid, mkstemp's 8 characters, suffix
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if len(raw) <= room:
            return f".{name}."
    readable = raw.decode("ascii", "replace").replace("\ufffd", "_")[:room // 2]
    return f".{readable}~{hashlib.sha256(raw).hexdigest()[:16]}."


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files of `target` left by processes that no longer run (e.g. after SIGKILL).

    Only names this module makes (`.NAME.PID.XXXXXXXX<suffix>`) with a dead PID are touched, so a
    concurrent writer's temporary file is never removed. Returns the paths removed.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    prefix = _temporary_prefix(target.name)
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.[A-Za-z0-9_]{{8}}(\..*)?$")
    removed = []
    try:
        candidates = [entry for entry in folder.iterdir() if entry.name.startswith(prefix)]
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
        _check_name_length(target)
        handle, tmp_name = tempfile.mkstemp(prefix=f"{_temporary_prefix(target.name)}{os.getpid()}.",
                                            suffix=suffix, dir=folder)
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
    except Exception as exc:
        if isinstance(exc, AgfpruneError) or not _is_filesystem_failure(exc, folder):
            raise
        raise OutputError(f"cannot write {target}: {_filesystem_detail(exc)}; the previous file is "
                          "unchanged") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _is_filesystem_failure(exc: BaseException, folder: Path) -> bool:
    """Whether a writer's exception says the filesystem refused the data (disk full, size limit),
    as opposed to a bug: writers such as safetensors and torch.save wrap the OSError in their own type."""
    if isinstance(exc, OSError) or isinstance(exc.__cause__, OSError):
        return True
    text = str(exc)
    return any(message in text for message in _OUTPUT_MESSAGES) or _disk_full(folder)


def _disk_full(folder: Path) -> bool:
    try:
        usage = os.statvfs(folder)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < 1 << 20


def _filesystem_detail(exc: BaseException) -> str:
    text = str(exc)
    for message in ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system"):
        if message in text or message.lower().replace(" ", "") in text.lower().replace(" ", ""):
            return message
    if "StorageFull" in text or "file write failed" in text:
        return "No space left on device (or file size limit reached)"
    return first_line(exc, 160)


def _check_name_length(target: Path) -> None:
    """ENAMETOOLONG before any work, with the name's length in the message."""
    length = len(target.name.encode("utf-8", "surrogateescape"))
    if length > NAME_MAX:
        raise OutputError(f"cannot write {target}: file name is {length} bytes, longer than the "
                          f"filesystem allows ({NAME_MAX})")


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
    _check_name_length(target)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        probe_root = folder
        while not probe_root.exists():
            probe_root = probe_root.parent
        if not probe_root.is_dir():
            raise OutputError(f"cannot write {target}: folder {probe_root} is not writable (it is a file)")
        if not os.access(probe_root, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {target}: folder {probe_root} is not writable")
        if target.is_dir():
            raise OutputError(f"cannot write {target}: it is a folder")
        if target.exists() and not target.is_file():
            raise OutputError(f"cannot write {target}: it is not a regular file (a pipe, device or socket)")
    except OSError as exc:  # a folder name too long, a symlink loop...
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None


PathLike = str | os.PathLike[str]


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks and `..`, or hard links."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return False


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None] | None = None) -> None:
    """check_writable for every output, and refuse (UsageError) an output that is one of the inputs or
    another output of the same command, after symlinks, `..` and hard links: writing it would destroy
    the input, or one result would overwrite the other. Keys are option names for the message."""
    named_outputs = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    named_inputs = [(name, Path(path)) for name, path in (inputs or {}).items()
                    if path is not None and not str(path).startswith("synthetic:")]
    for index, (name, path) in enumerate(named_outputs):
        for other_name, other in named_inputs + named_outputs[:index]:
            if _same_file(path, other):
                raise UsageError(f"{name} {path} is the same file as {other_name} {other}; writing it would "
                                 f"{'destroy the input' if (other_name, other) in named_inputs else 'overwrite the other output'}"
                                 " (choose another output path)")
    for _name, path in named_outputs:
        check_writable(path)
