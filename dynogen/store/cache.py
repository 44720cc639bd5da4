"""A request cache: an answered request is never sent, or paid for, twice.

Keyed by a 128-bit xxhash of the exact request body (model, messages, sampling
parameters, response format, seed — everything that shapes the answer), so it
is shared safely across resumes and across runs. Only whole, successful
answers are stored. The API key is never part of a body, so never cached.

SQLite in WAL mode with ``synchronous=NORMAL``: each answer is committed on
arrival (no fsync per commit), which survives ``kill -9`` of the process — the
failure a long run meets — at ~20 µs per answer.

Spoiled state: a file SQLite cannot open (garbage, a truncated header, a
failed disk) is moved aside as ``cache.sqlite.corrupt-<time>`` and a new
cache started; ``recovered`` says so, and how many answers may be paid for
again (printed as a warning, and kept for the run's report). A cache that
breaks later in the run turns into misses (counted in ``errors``), never a
traceback. A full disk is not
corruption: ``put`` raises ``StorageError`` and the run stops to be resumed.
A shared ``--cache`` has one writer at a time (``lock=True``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import xxhash

from dynogen.store.lock import RunLock
from dynogen.store.storage import storage_error, warn

__all__ = ["RequestCache", "request_key"]

# SQLite result codes that mean the disk, not the file, is at fault.
_DISK_CODES = {getattr(sqlite3, n) for n in (
    "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN") if hasattr(sqlite3, n)}


def request_key(body: bytes) -> bytes:
    return xxhash.xxh3_128_digest(body)


def _is_disk_error(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _DISK_CODES:
        return True
    text = str(e).lower()
    return "disk is full" in text or "disk i/o error" in text or "readonly" in text


def _as_oserror(e: sqlite3.Error, path: Path) -> OSError:
    """The OS error behind a SQLite disk error. SQLite reports a full disk as an I/O
    error on some writes (WAL growth), so a disk with almost no room left counts as full."""
    import errno

    text = str(e).lower()
    if "readonly" in text or "read-only" in text:
        return OSError(errno.EROFS, "Read-only file system")
    try:
        st = os.statvfs(path.parent)
        nearly_full = st.f_bavail * st.f_frsize < 256 * 1024
    except OSError:
        nearly_full = False
    if "full" in text or nearly_full:
        return OSError(errno.ENOSPC, "No space left on device")
    return OSError(errno.EIO, str(e))


def _count_rows(path: Path) -> int | None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


class RequestCache:
    """``get``/``put`` raw answer bodies by request key.

    >>> cache = RequestCache(run_dir / "cache.sqlite")
    >>> cache.put(request_key(body), answer_bytes); cache.get(request_key(body))
    """

    def __init__(self, path: str | Path, *, lock: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(self.path, purpose="cache").acquire() if lock else None
        self.recovered: str | None = None
        self.errors = 0
        self._broken = False
        try:
            self._db = self._open()
        except sqlite3.Error as e:
            if _is_disk_error(e):
                self._release()
                raise storage_error(_as_oserror(e, self.path), self.path) from None
            self._db = self._move_aside(e)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key BLOB PRIMARY KEY, body BLOB NOT NULL)")
            db.execute("SELECT key FROM answers LIMIT 1").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _move_aside(self, err: sqlite3.Error) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        rows = _count_rows(self.path)
        for suffix in ("", "-wal", "-shm"):
            p = self.path.with_name(self.path.name + suffix)
            if p.exists():
                p.replace(aside.with_name(aside.name + suffix))
        lost = (f"{rows} cached answers" if rows is not None
                else "its cached answers (it could not be counted)")
        self.recovered = (f"the request cache {self.path} could not be opened ({err}); moved "
                          f"aside to {aside.name} and started a new one: {lost} may be paid "
                          "for again if requested")
        warn(self.recovered)
        return self._open()

    def get(self, key: bytes) -> bytes | None:
        if self._broken:
            return None
        try:
            row = self._db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            self._break()
            row = None
        return None if row is None else bytes(row[0])

    def put(self, key: bytes, body: bytes) -> None:
        if self._broken:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO answers (key, body) VALUES (?, ?)",
                             (key, body))
        except sqlite3.Error as e:
            if _is_disk_error(e):
                raise storage_error(_as_oserror(e, self.path), self.path) from None
            self._break()

    def _break(self) -> None:
        # Corruption found mid-run: carry on uncached rather than stop a paid-for run.
        self.errors += 1
        self._broken = True

    def __len__(self) -> int:
        if self._broken:
            return 0
        try:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        except sqlite3.Error:
            self._break()
            return 0

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
