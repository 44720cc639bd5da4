"""What a command ends with: its exit code, output path, report and one-line message.

The one mapping from an error that ended a command to its exit code lives here,
below every command, so a grow step (a run) and the CLI read the same codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynogen.errors import APIConnectionError, FatalAPIError, StorageError

__all__ = ["EXIT", "RunOutcome", "exit_code"]

EXIT = {"ok": 0, "error": 1, "budget": 3, "fatal": 4, "interrupted": 130}


def exit_code(err: BaseException | None) -> int:
    """The one mapping from an error that ended a command to its exit code."""
    if isinstance(err, StorageError):
        return EXIT["interrupted"]  # a full disk stops a run like Ctrl-C: resume later
    if isinstance(err, FatalAPIError | APIConnectionError):
        return EXIT["fatal"]
    return EXIT["error"]


@dataclass
class RunOutcome:
    exit_code: int
    out: Path
    report: dict[str, Any]
    message: str
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
