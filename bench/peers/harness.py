"""Run one client as a child process and measure what it cost: wall time, CPU, peak RSS.

Every client (dynogen and each peer) runs in its own process so its CPU and
memory are its own, read from the kernel rather than estimated: ``os.wait4``
returns the child's user + system CPU seconds (its reaped children included).

Peak memory is *not* taken from ``ru_maxrss``: on Linux a child's maxrss
starts from the forked copy of the parent and survives ``exec``, so every
client would report at least the bench process's own size. Instead a sampler
thread reads, every ``sample_every`` seconds, each process's ``VmHWM`` (the
kernel's high-water mark of the exec'd image, so short peaks between samples
are caught too) and the live RSS of the whole process tree; peak RSS is the
larger of the two. The RSS samples are the memory curve the scale benchmark
reports.

Standard library plus psutil only, so the harness runs under the project's
venv and imports nothing from the peers' venv.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = ["Measured", "run_measured", "tree_hwm", "tree_rss"]


@dataclass
class Measured:
    """What one client process cost. ``rss_curve`` is ``[(seconds, MB), ...]``."""

    argv: list[str]
    returncode: int | None
    wall_seconds: float
    cpu_user: float
    cpu_system: float
    peak_rss_mb: float
    timed_out: bool = False
    rss_curve: list[tuple[float, float]] = field(default_factory=list)
    stdout_tail: str = ""
    stderr_tail: str = ""

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user + self.cpu_system

    def to_dict(self) -> dict[str, Any]:
        return {
            "returncode": self.returncode, "timed_out": self.timed_out,
            "wall_seconds": round(self.wall_seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_user": round(self.cpu_user, 3), "cpu_system": round(self.cpu_system, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "rss_curve": [(round(t, 2), round(m, 1)) for t, m in self.rss_curve],
            "stderr_tail": self.stderr_tail,
        }


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its live descendants (0 once it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def tree_hwm(pid: int) -> int:
    """Sum of ``VmHWM`` (peak resident bytes since exec) over ``pid`` and its live descendants."""
    try:
        proc = psutil.Process(pid)
        pids = [proc.pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return 0
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            pass
    return total


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def run_measured(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, timeout: float = 600.0,
                 sample_every: float = 0.25, log_dir: str | Path | None = None) -> Measured:
    """Run ``argv`` to completion (or ``timeout``: SIGTERM, then SIGKILL) and measure it.

    The child's stdout/stderr go to files in ``log_dir`` (a pipe could fill and
    stall a chatty peer); their tails come back for the report.
    """
    logs = Path(log_dir) if log_dir else Path(os.environ.get("TMPDIR", "/tmp"))
    logs.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    out_path, err_path = logs / f"client-{stamp}.out", logs / f"client-{stamp}.err"
    curve: list[tuple[float, float]] = []
    stop = threading.Event()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)

        hwm = [0]

        def sample() -> None:
            while not stop.wait(sample_every):
                rss = tree_rss(proc.pid)
                if rss:
                    curve.append((time.perf_counter() - t0, rss / 2**20))
                hwm[0] = max(hwm[0], tree_hwm(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False

        def kill_after_timeout() -> None:
            nonlocal timed_out
            if not stop.wait(timeout):
                timed_out = True
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                if not stop.wait(10):
                    with suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_after_timeout, daemon=True)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted bench: the client is in its own session, end it too
            stop.set()
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        wall = time.perf_counter() - t0
        stop.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
        # Grandchildren the client left running (a peer's worker pool) end with it.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    peak = max([hwm[0] / 2**20] + [m for _, m in curve])
    return Measured(list(argv), proc.returncode, wall, usage.ru_utime, usage.ru_stime, peak,
                    timed_out, curve, _tail(out_path), _tail(err_path))

