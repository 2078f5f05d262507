"""Error classes with documented exit codes.

Every failure a user can cause maps to one class, so the CLI can print one line and exit with a
code a shell script can branch on (see docs/cli.md).
"""

from __future__ import annotations


class AgfpruneError(Exception):
    """Base of all expected failures: a one-line message for the user, and an exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        message = _original_message(message)
        super().__init__(message)
        self.message = message


def _original_message(message: str) -> str:
    """A DataLoader worker's error reaches the main process rebuilt by torch as `Caught DataError in
    DataLoader worker process 0. Original Traceback ...: <message>`; keep the message only."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    name, separator, text = last.partition(": ")
    return text if separator and name.rsplit(".", 1)[-1].endswith("Error") else last


class UsageError(AgfpruneError):
    """An option value is invalid (wrong range, unknown name, conflicting options)."""

    exit_code = 2


class DataError(AgfpruneError):
    """Input data is missing, empty, unreadable or of the wrong layout."""

    exit_code = 3


class ModelError(AgfpruneError):
    """A model name, checkpoint or artefact is unknown, corrupt, or does not match."""

    exit_code = 4


class NumericalError(AgfpruneError):
    """A computation produced NaN/Inf or otherwise could not complete."""

    exit_code = 5


class OutputError(AgfpruneError):
    """An output file could not be written (permissions, disk full)."""

    exit_code = 6


EXIT_INTERRUPTED = 130
EXIT_CODES = {
    "ok": 0,
    "internal": 1,
    "usage": UsageError.exit_code,
    "data": DataError.exit_code,
    "model": ModelError.exit_code,
    "numerical": NumericalError.exit_code,
    "output": OutputError.exit_code,
    "interrupted": EXIT_INTERRUPTED,
}


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (or its type name), for one-line errors."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
