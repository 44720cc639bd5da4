"""Write errors on every file a run writes (issue #12): one line, exit 130, an exact resume.

Faults are injected where the store meets the disk (``store.storage.os_write``
and ``os_fsync``), at a chosen file and write, with a partial write first as a
full disk does; the cache (SQLite writes in C) gets its full disk from a
connection that refuses inserts. Each run must stop with the one line
"no space left in DIR: free some and run the same command to resume" and the
interrupted exit code, leave every journal consistent, keep the answers it had
(nothing answered is paid twice), and resume — the same command — to exactly
the output of a run that never failed. A real small filesystem (a tmpfs
mounted here, when the machine lets us) does the same without injection.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import EXIT, arun, exit_code
from dynogen.compose import run_identity
from dynogen.config import Config, Secret
from dynogen.errors import StorageError
from dynogen.store import cache as cache_mod
from dynogen.store import storage
from dynogen.testing import FakeOpenAI, FakeProcess, serve, start_fake_process
from tests.helpers import REPO, journals_consistent, lines, run_env, same_output, write_source

UNITS = 8


def config(src: Path, out: Path, url: str, **kw: Any) -> Config:
    return Config(source=str(src), out=str(out), base_url=url, free=True, quiet=True,
                  max_in_flight=4, retry_base_delay=0.01, retry_max_delay=0.05,
                  api_key=Secret("sk-test"), rows_per_split=4, **kw)


def message(out: Path, code: int = errno.ENOSPC) -> str:
    if code == errno.EIO:
        return "write error in"
    return f"no space left in {out}: free some and run the same command to resume"


class DiskFault:
    """Fail writes to files named ``name`` from the ``after``-th write on, as a disk would:
    that write lands partly, then every write raises ``code``."""

    def __init__(self, name: str, after: int = 1, code: int = errno.ENOSPC,
                 on_fsync: bool = False) -> None:
        self.name, self.after, self.code, self.on_fsync = name, after, code, on_fsync
        self.writes = 0
        self.tripped = False
        self.real_write, self.real_fsync = storage.os_write, storage.os_fsync

    def _hit(self, fd: int) -> bool:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return Path(path).name in (self.name, self.name + ".tmp")

    def write(self, fd: int, data: Any) -> int:
        if self._hit(fd):
            self.writes += 1
            if self.tripped:
                raise OSError(self.code, os.strerror(self.code))
            if self.writes >= self.after and not self.on_fsync:
                self.tripped = True
                if len(data) > 1:
                    return int(self.real_write(fd, bytes(data[: len(data) // 2])))
                raise OSError(self.code, os.strerror(self.code))
        return int(self.real_write(fd, data))

    def fsync(self, fd: int) -> None:
        if self.on_fsync and self._hit(fd) and self.writes >= self.after:
            self.tripped = True
            raise OSError(self.code, os.strerror(self.code))
        self.real_fsync(fd)


class FullCache:
    """A cache connection whose inserts fail as SQLite's do on a full disk."""

    def __init__(self, db: sqlite3.Connection, after: int) -> None:
        self.db, self.after, self.inserts = db, after, 0

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT"):
            self.inserts += 1
            if self.inserts >= self.after:
                raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def close(self) -> None:
        self.db.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("faults") / "src"
    write_source(src, UNITS)
    return src


@pytest.fixture(scope="module")
def reference(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import asyncio

    ref = tmp_path_factory.mktemp("ref") / "ref"

    async def go() -> None:
        async with serve(FakeOpenAI(seed=5)) as server:
            outcome = await arun(config(source, ref, server.url))
        assert outcome.exit_code == 0, outcome.message

    asyncio.run(go())
    yield ref


async def _run_with_fault(source: Path, out: Path, fault: DiskFault | None,
                          monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAI,
                          full_cache_after: int | None = None) -> tuple[int, str]:
    if fault is not None:
        monkeypatch.setattr(storage, "os_write", fault.write)
        monkeypatch.setattr(storage, "os_fsync", fault.fsync)
    if full_cache_after is not None:
        real_open = cache_mod.RequestCache._open

        def open_full(self: cache_mod.RequestCache) -> Any:
            return FullCache(real_open(self), full_cache_after)

        monkeypatch.setattr(cache_mod.RequestCache, "_open", open_full)
    try:
        async with serve(fake) as server:
            try:
                outcome = await arun(config(source, out, server.url))
                code, msg = outcome.exit_code, outcome.message
            except StorageError as e:  # a failure before the run started (the manifest)
                code, msg = exit_code(e), str(e)
    finally:
        monkeypatch.undo()
    return code, msg


# Every file a run writes, and the write of it that fails (a later one where the first
# would be the manifest's or the report's only write of the run).
FILES = [("units.jsonl", 1), ("tasks.jsonl", 3), ("spend.jsonl", 5), ("builds.jsonl", 1),
         ("instances.jsonl", 2), ("manifest.json", 1), ("report.json", 1),
         ("calibration.json", 1)]


@pytest.mark.parametrize(("name", "after"), FILES, ids=[f for f, _ in FILES])
async def test_a_full_disk_at_any_file_stops_in_one_line_and_resumes_exactly(
        tmp_path: Path, source: Path, reference: Path, name: str, after: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    fake = FakeOpenAI(seed=5)
    fault = DiskFault(name, after)
    code, msg = await _run_with_fault(source, out, fault, monkeypatch, fake)
    assert fault.tripped, f"no write to {name} was made"
    assert code == EXIT["interrupted"] == 130
    assert msg == message(out), msg
    assert "\n" not in msg
    journals_consistent(out)
    answered = fake.stats.requests

    async with serve(fake) as server:
        again = await arun(config(source, out, server.url))
    assert again.exit_code == 0, again.message
    same_output(out, reference)
    journals_consistent(out)
    ref_requests = orjson.loads((reference / "report.json").read_bytes())["requests"]
    # Answers that arrived before the stop were cached: none is paid for twice (bar the
    # one whose spend line could not be written, which is not cached).
    assert fake.stats.requests - ref_requests <= (1 if name == "spend.jsonl" else 0), (
        answered, fake.stats.requests, ref_requests)


async def test_an_io_error_on_fsync_is_a_stop_too(tmp_path: Path, source: Path,
                                                  reference: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    fake = FakeOpenAI(seed=5)
    fault = DiskFault("tasks.jsonl", 1, code=errno.EIO, on_fsync=True)
    code, msg = await _run_with_fault(source, out, fault, monkeypatch, fake)
    assert fault.tripped
    assert code == 130 and msg.startswith(f"write error in {out} (Input/output error"), msg
    journals_consistent(out)
    async with serve(fake) as server:
        again = await arun(config(source, out, server.url))
    assert again.exit_code == 0, again.message
    same_output(out, reference)


async def test_a_full_disk_under_the_cache_stops_and_resumes(
        tmp_path: Path, source: Path, reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    fake = FakeOpenAI(seed=5)
    code, msg = await _run_with_fault(source, out, None, monkeypatch, fake, full_cache_after=3)
    assert code == 130 and msg == message(out), msg
    journals_consistent(out)
    async with serve(fake) as server:
        again = await arun(config(source, out, server.url))
    assert again.exit_code == 0, again.message
    same_output(out, reference)


# ------------------------------------------------------------------ a real small filesystem


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root; the injected faults above cover the files")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture(scope="module")
def fake_proc() -> Iterator[FakeProcess]:
    with start_fake_process(seed=5) as proc:
        yield proc


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``disk``."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with ballast.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return ballast


@pytest.mark.parametrize("leave", [8_192, 40_960, 98_304, 196_608])
def test_a_real_full_filesystem_stops_in_one_line_and_the_same_command_resumes(
        small_disk: Path, source: Path, reference: Path, fake_proc: FakeProcess,
        tmp_path: Path, leave: int) -> None:
    out = small_disk / "out"
    argv = [sys.executable, "-m", "dynogen", "run", "--source", str(source), "--out", str(out),
            "--base-url", fake_proc.url, "--free", "--quiet", "--max-in-flight", "4",
            "--rows-per-split", "4"]
    env = run_env(tmp_path, OPENAI_API_KEY="sk-test", PYTHONPATH=str(REPO))
    ballast = _fill(small_disk, leave)
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    said = r.stderr.strip().splitlines()
    if r.returncode == 0:
        pytest.fail(f"the run fitted in {leave} bytes; lower the level ({said})")
    assert r.returncode == 130, r.stderr
    assert len(said) == 1 and said[0].endswith(message(out)), said  # one line, no traceback
    if out.exists():
        journals_consistent(out)
    ballast.unlink()  # "free some"
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    same_output(out, reference)
    assert lines(out / "units.jsonl")


def test_rows_unreadable_for_a_full_disk_stop_the_build_instead_of_being_journaled(
        tmp_path: Path, reference: Path) -> None:
    from dynogen.instances.build import build_instances
    from dynogen.io.rows import RowsUnavailable
    from dynogen.store.rundir import RunDir

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for name in ("builds.jsonl", "instances.jsonl"):
        (out / name).unlink()

    def opener(*args: Any, **kw: Any) -> Any:
        # What `datasets` raises, through io.rows, when it cannot write its cache.
        raise RowsUnavailable("load_error", "x: OSError: [Errno 28] No space left on device")

    cfg = Config(**{k: v for k, v in orjson.loads((out / "manifest.json").read_bytes())[
        "config"].items() if k != "variants"})
    rundir = RunDir(out).open(cfg, identity=run_identity(cfg), stage="build")
    try:
        with pytest.raises(StorageError, match=f"no space left in {out}: free some"):
            build_instances(cfg, rundir, opener=opener)
    finally:
        rundir.close()
    assert not lines(out / "builds.jsonl")  # nothing journaled as unavailable
