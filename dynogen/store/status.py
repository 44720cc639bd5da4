"""``status.json``: what a running command is doing, for another terminal to read.

Informational only: it is rewritten whole (temp file, then rename) every few
seconds while a command runs, read without the directory's lock, and never
consulted by a resume. A missing, torn or spoiled file reads as ``None``; a
disk that refuses the write skips that write (the run's own files say what
happened).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from dynogen.errors import StorageError
from dynogen.store.storage import atomic_write

__all__ = ["STATUS", "read_status", "write_status"]

STATUS = "status.json"


def write_status(directory: Path, data: dict[str, Any]) -> bool:
    """Replace ``directory/status.json``; ``False`` when the disk refused (not an error)."""
    try:
        atomic_write(directory / STATUS, orjson.dumps(data, option=orjson.OPT_INDENT_2))
    except (StorageError, OSError):
        return False
    return True


def read_status(directory: str | Path) -> dict[str, Any] | None:
    """The last status written in ``directory`` (a run directory or a collection), or
    ``None`` when there is none or it cannot be read."""
    path = Path(directory) / STATUS
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    data.setdefault("age_seconds", None)
    try:
        data["written_by_pid_alive"] = _alive(int(data.get("pid") or 0))
    except (TypeError, ValueError):
        data["written_by_pid_alive"] = False
    return data


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
