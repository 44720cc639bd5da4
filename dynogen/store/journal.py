"""Append-only JSONL files that survive a kill at any instant.

Writers append whole lines with one ``write`` and flush at commit points, so
after ``kill -9`` a file holds complete lines plus at most one torn tail.
``repair`` cuts that tail. A journal line may carry the byte offset of a data
file at the moment it was committed (``JsonlWriter.tell``), which lets a
restart cut the data file back to the last commit: lines written for a unit
whose commit never landed are removed, so nothing is duplicated on resume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

__all__ = ["JsonlWriter", "iter_jsonl", "repair", "truncate_to"]

_DUMP_OPTS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def repair(path: Path) -> int:
    """Cut a torn last line; returns the bytes removed (0 when the file was whole)."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        # Read backwards in blocks for the last newline.
        pos = size
        block = 65536
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                end = start + i + 1
                if end < size:
                    f.truncate(end)
                return size - end
            pos = start
        f.truncate(0)
        return size


def truncate_to(path: Path, offset: int) -> int:
    """Cut ``path`` back to ``offset`` bytes (a committed position); returns bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size > offset:
        with path.open("rb+") as f:
            f.truncate(offset)
        return size - offset
    return 0


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete, parseable lines only; a torn or corrupt line is skipped, not raised."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


class JsonlWriter:
    """Buffered appender; ``flush`` makes everything written so far durable against a kill."""

    __slots__ = ("path", "_f", "_buf", "_pending", "_offset")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = path.open("ab")
        self._offset = self._f.tell()
        self._buf: list[bytes] = []
        self._pending = 0

    def write(self, obj: Any) -> None:
        line = orjson.dumps(obj, option=_DUMP_OPTS)
        self._buf.append(line)
        self._pending += len(line)

    def flush(self, fsync: bool = False) -> None:
        if self._buf:
            self._f.write(b"".join(self._buf))
            self._buf.clear()
            self._offset += self._pending
            self._pending = 0
        self._f.flush()
        if fsync:
            os.fsync(self._f.fileno())

    def tell(self) -> int:
        """Byte offset after everything written so far (flushed or not)."""
        return self._offset + self._pending

    def close(self) -> None:
        self.flush(fsync=True)
        self._f.close()
