"""One writer per run directory, per ``call`` output, per shared cache.

Two processes appending to the same journals interleave their lines (the
same command started twice wrote 1,863 duplicate tasks before this lock).
The lock is ``flock`` on a small lock file beside what it protects: the
kernel drops it when its holder exits for any reason, ``kill -9`` and power
loss included, so there is never a stale lock to clean up by hand. A second
writer does not wait: it refuses at once with one line naming the holder
(pid, host, since when), which the holder wrote into the lock file.

Readers (``export``, status commands, cancelling batches) take no lock: every
file a reader opens is either replaced atomically or append-only with
complete lines, so they can run beside a writer.

    >>> with RunLock(Path("runs/a"), purpose="run"):
    ...     ...  # the only writer of runs/a until the block ends

The lock excludes other processes. Within one process it is re-entrant
(counted per lock file), so the API can hold a directory's lock around a
command whose parts (run, then build) take it again. On NFS, Linux maps
``flock`` to byte-range locks, which NFSv4 servers honour.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

import orjson

from dynogen.errors import LockedError, RunDirError

__all__ = ["LOCK_NAME", "RunLock", "lock_path", "read_holder"]

LOCK_NAME = ".dynogen.lock"

# Lock files this process holds: real path -> [fd, holders].
_HELD: dict[str, list[int]] = {}


def lock_path(target: Path) -> Path:
    """The lock file for ``target``: inside it for a directory, beside it for a file."""
    if target.is_dir():
        return target / LOCK_NAME
    return target.with_name(target.name + ".lock")


def read_holder(path: Path) -> dict[str, object]:
    """What the holder wrote about itself; empty if unreadable (e.g. mid-write)."""
    try:
        obj = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "another process"
    since = holder.get("since")
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
            if isinstance(since, int | float) else "an unknown time")
    return (f"{holder.get('command') or 'dynogen'} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {when})")


class RunLock:
    """An exclusive, non-blocking, crash-released lock on a directory or a file.

    ``purpose`` says what the holder is doing ("run", "build", "call", "cache")
    and appears in the refusal a second writer gets.
    """

    __slots__ = ("target", "purpose", "path", "_key")

    def __init__(self, target: str | Path, *, purpose: str = "run") -> None:
        self.target = Path(target)
        self.purpose = purpose
        self.path = lock_path(self.target)
        self._key: str | None = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> RunLock:
        if self._key is not None:
            return self
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self._key = key
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot create the lock file {self.path}: {e.strerror or e}; "
                              "check that the directory is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"cannot lock {self.path}: {e.strerror or e}") from None
            holder = _describe(read_holder(self.path))
            raise LockedError(
                f"{self.target} is in use by {holder}: one writer at a time. Wait for it to "
                "finish (or stop it), or use another path; reading it (export) is fine"
            ) from None
        _HELD[key] = [fd, 1]
        self._key = key
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": int(time.time()),
                "command": f"dynogen {self.purpose}"}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(info) + b"\n", 0)
        except OSError:
            pass  # a full disk must not stop the lock itself; the holder line is a courtesy
        return self

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        _HELD[key][1] -= 1
        if _HELD[key][1] <= 0:
            fd = _HELD.pop(key)[0]
            # The lock file stays: unlinking it would let a third process lock a new inode
            # while a second one still holds the old.
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.target)!r}, purpose={self.purpose!r}, held={self.held})"
