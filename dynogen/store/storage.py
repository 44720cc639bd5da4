"""How the store meets the disk: every write and fsync of a run goes through here.

Two jobs. First, a failed write (a full disk, a quota, an I/O error, a
read-only remount) becomes one ``StorageError`` whose message says what to
do, raised where the store writes; nothing above the store sees ``OSError``
from a write, and the run stops like an interrupted one (it resumes with the
same command once the cause is gone). Second, files replaced whole
(manifest, report) are written atomically: a temporary file, fsync, rename,
so a reader or a crash sees the old file or the new one, never half of one.

``os_write`` and ``os_fsync`` are looked up at call time so tests can inject
``ENOSPC``/``EIO`` at any file and any byte without patching the writers.

Durability policies (``Config.durability``):

- ``batched`` (default): data and journal lines are written (one ``write``
  per commit, which survives ``kill -9``) and synced about once a second, data
  files first, journal lines only after the data they point at is synced.
  A power loss then costs at most the last second of commits, which a
  resume redoes from the request cache.
- ``always``: every commit is synced, data before journal, before the next.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from dynogen.errors import StorageError

__all__ = ["warn", "atomic_write", "fsync_fd", "os_fsync", "os_write", "storage_error",
           "sync_dir", "write_all"]

os_write = os.write
os_fsync = os.fsync

_SPACE = (errno.ENOSPC, errno.EDQUOT)


def warn(message: str) -> None:
    """One line on stderr for something the user should know but need not act on now."""
    print(f"dynogen: warning: {message}", file=sys.stderr, flush=True)


def storage_error(exc: OSError, path: Path | str) -> StorageError:
    """The one-line error for a failed write to ``path``."""
    p = Path(path)
    where = p.parent if p.name else p
    code = exc.errno
    if code in _SPACE:
        what = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        msg = f"{what} in {where}: free some and run the same command to resume"
    elif code == errno.EROFS:
        msg = (f"{where} is on a read-only filesystem (writing {p.name}): remount it "
               "read-write or copy the directory elsewhere, then run the same command to resume")
    else:
        reason = exc.strerror or type(exc).__name__
        msg = (f"write error in {where} ({reason}, writing {p.name}): check the disk, then "
               "run the same command to resume")
    return StorageError(msg, path=str(p), errno=code)


def write_all(fd: int, data: bytes | memoryview, path: Path | str) -> None:
    """Write every byte or raise ``StorageError`` (a short write is retried, as POSIX allows)."""
    view = memoryview(data)
    try:
        while view:
            n = os_write(fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "write returned 0")
            view = view[n:]
    except OSError as e:
        raise storage_error(e, path) from None


def fsync_fd(fd: int, path: Path | str) -> None:
    try:
        os_fsync(fd)
    except OSError as e:
        raise storage_error(e, path) from None


def sync_dir(path: Path) -> None:
    """Make a rename or a new file's directory entry durable (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os_fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise storage_error(e, path / ".") from None
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once; ``StorageError`` if the disk refuses."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise storage_error(e, path) from None
    try:
        write_all(fd, data, path)
        fsync_fd(fd, path)
    except StorageError:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # a half-written temp file must not eat the space freed
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise storage_error(e, path) from None
    sync_dir(path.parent)

