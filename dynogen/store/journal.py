"""Append-only JSONL files that survive a kill, a full disk and a lost write.

Writers append whole lines with one ``write`` per commit, so after ``kill -9``
a file holds complete lines plus at most one torn tail. A journal line says
what it depends on: the byte range of the data file its unit (or build)
wrote, and how many lines that range holds (``tasks_start``/``tasks_end`` and
``tasks_kept`` for a unit; ``instances_start``/``instances_end`` and
``instances`` for a build). On resume ``verify_chain`` walks the journal
against the data file and cuts both back to the last record whose lines are
all there and whole, so a lost or torn write — a power loss that kept
``units.jsonl`` further than ``tasks.jsonl``, a line of zeros, garbage — is
redone, never reported done with its output missing.

``Commits`` orders a commit's writes: side files (``spend.jsonl``, which the
budget relies on) and data first, the journal line that points at them last,
and syncs them on the ``durability`` policy (see ``storage``). A write that
fails marks the whole group failed: nothing more is written by any of its
files, so the directory on disk stays what the last good commit left.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dynogen.errors import StorageError
from dynogen.store.storage import fsync_fd, storage_error, write_all

__all__ = ["ChainCheck", "Commits", "JsonlWriter", "count_garbage", "iter_jsonl", "repair",
           "truncate_to", "verify_chain"]

_DUMP_OPTS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
SYNC_INTERVAL = 1.0


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


def count_garbage(path: Path) -> int:
    """Lines ``iter_jsonl`` would skip (not JSON objects); a torn tail not included."""
    if not path.exists():
        return 0
    bad = 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                ok = isinstance(orjson.loads(line), dict)
            except orjson.JSONDecodeError:
                ok = False
            bad += not ok
    return bad


class JsonlWriter:
    """Buffered appender: ``write`` queues a line, ``flush`` writes the queue in one syscall.

    A failed write raises ``StorageError`` once; the writer then cuts the file
    back to its last whole line and drops everything after, so a full disk
    never leaves a half line nor makes a later flush raise again.
    """

    __slots__ = ("path", "_fd", "_buf", "_pending", "_offset", "failed", "dropped")

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise storage_error(e, path) from None
        self._offset = os.fstat(self._fd).st_size
        self._buf: list[bytes] = []
        self._pending = 0
        self.failed: StorageError | None = None
        self.dropped = 0  # lines not written because the writer had failed

    def write(self, obj: Any) -> None:
        line = orjson.dumps(obj, option=_DUMP_OPTS)
        self._buf.append(line)
        self._pending += len(line)

    def flush(self, fsync: bool = False) -> None:
        if self.failed is not None:
            self.dropped += len(self._buf)
            self._buf.clear()
            self._pending = 0
            return
        try:
            if self._buf:
                write_all(self._fd, b"".join(self._buf), self.path)
                self._buf.clear()
                self._offset += self._pending
                self._pending = 0
            if fsync:
                fsync_fd(self._fd, self.path)
        except StorageError as e:
            self.fail(e)
            raise

    def fail(self, err: StorageError) -> None:
        """Stop writing: cut back to the last whole line written and drop what is queued."""
        if self.failed is None:
            self.failed = err
            with contextlib.suppress(OSError):  # cutting frees space; it never needs any
                os.ftruncate(self._fd, self._offset)
        self.dropped += len(self._buf)
        self._buf.clear()
        self._pending = 0

    def tell(self) -> int:
        """Byte offset after everything written so far (flushed or not)."""
        return self._offset + self._pending

    def take(self) -> bytes:
        """Hand the queued lines over (for ``append_synced`` in another thread)."""
        data = b"".join(self._buf)
        self._buf.clear()
        self._pending = 0
        return data

    def append_synced(self, data: bytes) -> None:
        """Write and fsync ``data`` (lines from ``take``); on failure cut them back off.

        Safe in a worker thread while the owner thread only queues (``write``)."""
        if not data:
            return
        try:
            write_all(self._fd, data, self.path)
            fsync_fd(self._fd, self.path)
        except StorageError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._offset)
            raise
        self._offset += len(data)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush(fsync=True)
        finally:
            os.close(self._fd)
            self._fd = -1


class Commits:
    """One commit group: ``side`` and ``data`` files, then the ``journal`` that points at them.

    >>> group = Commits(units, data=[tasks], side=[spend], durability="batched")
    >>> tasks.write(task); units.write(record); group.commit()
    """

    def __init__(self, journal: JsonlWriter, *, data: Sequence[JsonlWriter] = (),
                 side: Sequence[JsonlWriter] = (), durability: str = "batched",
                 interval: float = SYNC_INTERVAL, background: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.journal = journal
        self.first = (*side, *data)
        self.always = durability == "always"
        self.interval = interval
        self.clock = clock
        self._last_sync = clock()
        self.failed: StorageError | None = None
        self.syncs = 0
        # Batched syncs run in one worker thread (fsync releases the GIL): an fsync can
        # take tens of milliseconds on a busy disk, which the event loop must not wait out.
        self._pool = ThreadPoolExecutor(1, "dynogen-sync") if background else None
        self._job: Future[None] | None = None

    def commit(self) -> None:
        """Make the lines written since the last commit durable, data before journal.

        ``batched``: data is written now and the journal line waits (in memory)
        for the next sync, about a second away, so it never reaches the disk
        before the lines it points at. ``always``: both are synced now.
        """
        if self.failed is not None:
            raise self.failed
        if self.always:
            self._guarded(self._sync)
            return
        self._guarded(self._write_data)
        if self.clock() - self._last_sync < self.interval:
            return
        if self._pool is None:
            self._guarded(self._sync)
        elif self._job is None or self._job.done():
            self._guarded(self._collect)
            # The journal lines queued so far point only at data written by now.
            lines = self.journal.take()
            self._job = self._pool.submit(self._sync_in_worker, lines)
            self._last_sync = self.clock()

    def sync(self) -> None:
        """Sync everything written and write out the journal lines waiting for it."""
        if self.failed is None:
            self._guarded(self._collect)
            self._guarded(self._sync)

    def close(self) -> None:
        try:
            self.sync()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            for w in (*self.first, self.journal):
                with contextlib.suppress(StorageError):  # the first failure was raised already
                    w.close()

    def _collect(self) -> None:
        """Wait for the worker's sync, and raise what it met."""
        job, self._job = self._job, None
        if job is not None:
            job.result()

    def _sync_in_worker(self, lines: bytes) -> None:
        for w in self.first:
            fsync_fd(w._fd, w.path)
        self.journal.append_synced(lines)
        self.syncs += 1

    def _write_data(self) -> None:
        for w in self.first:
            w.flush()

    def _sync(self) -> None:
        for w in self.first:
            w.flush(fsync=True)
        self.journal.flush(fsync=True)
        self._last_sync = self.clock()
        self.syncs += 1

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except StorageError as e:
            self.failed = e
            for w in (*self.first, self.journal):
                w.fail(e)
            raise


# ------------------------------------------------------------------------ verifying on resume


@dataclass(slots=True)
class ChainCheck:
    """What ``verify_chain`` found and cut."""

    journal: str
    kept: int = 0
    dropped: int = 0  # journal records cut: their units (or builds) are redone
    garbage: int = 0  # lines that were not JSON objects (the first one ends the chain)
    journal_bytes_cut: int = 0
    data_bytes_cut: int = 0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kept", "dropped", "garbage", "journal_bytes_cut",
                                              "data_bytes_cut", "reason")}

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.garbage or self.journal_bytes_cut or self.data_bytes_cut)


def _segment_ok(seg: bytes, count: int) -> bool:
    if not seg:
        return count == 0
    if not seg.endswith(b"\n") or seg.count(b"\n") != count:
        return False
    for line in seg.splitlines():
        try:
            if not isinstance(orjson.loads(line), dict):
                return False
        except orjson.JSONDecodeError:
            return False
    return True


def verify_chain(journal: Path, data: Path, *, start: str, end: str, count: str,
                 keep: Callable[[dict[str, Any]], bool] | None = None) -> ChainCheck:
    """Cut ``journal`` at its first record whose ``data`` lines are missing, torn or garbage.

    A record with ``end`` owns ``data[start:end]`` (``start`` defaults to the
    previous record's end, for journals written before ``start`` was kept),
    which must hold exactly ``count`` whole JSON lines. Records are checked in
    order and the chain stops at the first failure — a garbage line, a torn
    tail, a record whose range does not follow the last one or runs past the
    data, or one ``keep`` rejects — because everything after it was written
    after it. The data file is cut to the end of the last good range, which
    also removes lines of units that were written but never committed.
    """
    check = ChainCheck(journal.name)
    data_size = data.stat().st_size if data.exists() else 0
    good_j = 0  # journal bytes verified
    good_d = 0  # data bytes owned by verified records
    cut_at: int | None = None
    if journal.exists():
        with journal.open("rb") as jf, (data.open("rb") if data.exists() else
                                        open(os.devnull, "rb")) as df:
            for line in jf:
                reason = None
                if not line.endswith(b"\n"):
                    reason = "torn last line"
                else:
                    try:
                        rec = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        rec = None
                    if not isinstance(rec, dict):
                        check.garbage += 1
                        reason = "a line that is not a JSON object"
                    elif keep is not None and not keep(rec):
                        reason = "a record whose unit is redone"
                    else:
                        e = rec.get(end)
                        if isinstance(e, int) and not isinstance(e, bool):
                            s = rec.get(start, good_d)
                            n = rec.get(count) or 0
                            if s != good_d or e < good_d or e > data_size:
                                reason = f"a record pointing at {data.name} bytes it does not hold"
                            else:
                                df.seek(good_d)
                                if not _segment_ok(df.read(e - good_d), n if isinstance(n, int)
                                                   else -1):
                                    reason = f"a record whose lines in {data.name} are torn"
                                else:
                                    good_d = e
                if reason is not None:
                    cut_at = good_j
                    check.reason = reason
                    break
                check.kept += 1
                good_j += len(line)
            if cut_at is not None:
                jf.seek(cut_at)
                rest = jf.read()
                check.dropped = rest.count(b"\n") + (0 if rest.endswith(b"\n") else 1)
                if check.reason == "torn last line":
                    check.dropped = 0  # a torn tail was never a committed record
    if cut_at is not None:
        check.journal_bytes_cut = truncate_to(journal, cut_at)
    check.data_bytes_cut = truncate_to(data, good_d)
    return check
