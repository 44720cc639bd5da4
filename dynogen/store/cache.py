"""A request cache: an answered request is never sent, or paid for, twice.

Keyed by a 128-bit xxhash of the exact request body (model, messages, sampling
parameters, response format, seed — everything that shapes the answer), so it
is shared safely across resumes and across runs. Only whole, successful
answers are stored. The API key is never part of a body, so never cached.

SQLite in WAL mode with ``synchronous=NORMAL``: each answer is committed on
arrival (no fsync per commit), which survives ``kill -9`` of the process — the
failure a long run meets — at ~20 µs per answer.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import xxhash

__all__ = ["RequestCache", "request_key"]


def request_key(body: bytes) -> bytes:
    return xxhash.xxh3_128_digest(body)


class RequestCache:
    """``get``/``put`` raw answer bodies by request key.

    >>> cache = RequestCache(run_dir / "cache.sqlite")
    >>> cache.put(request_key(body), answer_bytes); cache.get(request_key(body))
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key BLOB PRIMARY KEY, body BLOB NOT NULL)"
        )

    def get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: bytes, body: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, body) VALUES (?, ?)", (key, body))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()
