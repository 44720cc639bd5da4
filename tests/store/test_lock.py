"""One writer per run directory, ``call`` output and shared cache (issue #12).

The same command started twice on one ``--out`` used to write 1,863 duplicate
task lines. Now a second writer — a real second process — refuses at once
with one line naming the holder and exit code 1, readers (``export``) work
beside the writer, and a holder killed with ``kill -9`` leaves no stale lock.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from dynogen.store.lock import LOCK_NAME, RunLock, read_holder
from dynogen.testing import FakeProcess, start_fake_process
from tests.helpers import REPO, lines, run_env, wait_until, write_source


def env(tmp: Path) -> dict[str, str]:
    return run_env(tmp, OPENAI_API_KEY="sk-test", PYTHONPATH=str(REPO))


def hold(target: Path, tmp: Path, purpose: str = "run") -> subprocess.Popen[str]:
    """Another process holding ``target``'s lock until killed (or its stdin closes)."""
    code = ("import sys; from dynogen.store.lock import RunLock; "
            f"lock = RunLock(sys.argv[1], purpose={purpose!r}).acquire(); "
            "print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], env=env(tmp),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def dynogen(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynogen", *args], env=env(tmp),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake_process(seed=3) as proc:
        yield proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, fake: FakeProcess) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("lock")
    write_source(tmp / "src", 4)
    r = dynogen(tmp, "run", "--source", str(tmp / "src"), "--out", str(tmp / "run"),
                "--base-url", fake.url, "--free", "--quiet")
    assert r.returncode == 0, r.stderr
    return tmp / "src", tmp / "run"


def test_a_second_writer_is_refused_at_once_naming_the_holder_and_readers_still_work(
        tmp_path: Path, finished: tuple[Path, Path], fake: FakeProcess) -> None:
    src, run = finished
    holder = hold(run, tmp_path)
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        # Refused at once: a writer that waited for the lock would never return, as the
        # holder lives until this test kills it (dynogen() gives up after 120 s).
        r = dynogen(tmp_path, "run", "--source", str(src), "--out", str(run), "--base-url",
                    fake.url, "--free", "--quiet")
        assert r.returncode == 1
        said = r.stderr.strip().splitlines()
        assert len(said) == 1, said
        assert f"pid {holder.pid} on {socket.gethostname()}, since " in said[0]
        assert "is in use by dynogen run" in said[0] and "one writer at a time" in said[0]
        b = dynogen(tmp_path, "build", "--out", str(run), "--quiet")
        assert b.returncode == 1 and "in use" in b.stderr
        e = dynogen(tmp_path, "export", "--out", str(run), "--format", "parquet")
        assert e.returncode == 0, e.stderr  # a reader takes no lock
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        assert after == before  # the refused writers touched nothing
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipes


def test_the_same_command_started_twice_writes_each_task_once(
        tmp_path: Path, finished: tuple[Path, Path]) -> None:
    src, _ = finished
    out = tmp_path / "out"
    with start_fake_process(latency_median=0.5, latency_sigma=0.01, seed=3) as slow:
        argv = [sys.executable, "-m", "dynogen", "run", "--source", str(src), "--out", str(out),
                "--base-url", slow.url, "--free", "--quiet", "--max-in-flight", "2"]
        first = subprocess.Popen(argv, env=env(tmp_path), stderr=subprocess.PIPE, text=True)

        def first_is_sending() -> bool:  # it holds the lock, and a request is in flight
            assert first.poll() is None, "the first run ended before it sent a request"
            return bool(read_holder(out / LOCK_NAME)) and slow.stats()["totals"]["requests"] > 0

        wait_until(first_is_sending, "the first run to take the lock and send")
        # Frozen mid-run (lock held, answers pending) for as long as the second takes,
        # however slow the machine: no race against the first run's pace.
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(argv, env=env(tmp_path), capture_output=True, text=True,
                                    timeout=120)
            assert first.poll() is None, "the first run ended before the second started"
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(120) == 0
    assert second.returncode == 1 and f"pid {first.pid}" in second.stderr, second.stderr
    tasks = lines(out / "tasks.jsonl")
    assert tasks and not [t for t, n in Counter(tasks).items() if n > 1]


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(
        tmp_path: Path, finished: tuple[Path, Path], fake: FakeProcess) -> None:
    src, run = finished
    holder = hold(run, tmp_path)
    assert read_holder(run / LOCK_NAME)["pid"] == holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate()  # reaps it and closes its pipes
    r = dynogen(tmp_path, "run", "--source", str(src), "--out", str(run), "--base-url",
                fake.url, "--free", "--quiet")
    assert r.returncode == 0, r.stderr
    assert read_holder(run / LOCK_NAME)["pid"] != holder.pid


def test_call_output_and_a_shared_cache_have_one_writer_each(
        tmp_path: Path, fake: FakeProcess) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(orjson.dumps({
        "custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}})
        + b"\n")
    answers, cache = tmp_path / "answers.jsonl", tmp_path / "shared.sqlite"
    base = ("--base-url", fake.url, "--free", "--quiet")
    holder = hold(answers, tmp_path, purpose="call")
    try:
        r = dynogen(tmp_path, "call", str(requests), "--out", str(answers), *base)
        assert r.returncode == 1 and f"pid {holder.pid}" in r.stderr
        assert "in use by dynogen call" in r.stderr
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipes
    holder = hold(cache, tmp_path, purpose="cache")
    try:
        r = dynogen(tmp_path, "call", str(requests), "--out", str(answers), "--cache", str(cache),
                    *base)
        assert r.returncode == 1 and "in use by dynogen cache" in r.stderr, r.stderr
        assert not answers.exists() or not lines(answers)
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipes
    r = dynogen(tmp_path, "call", str(requests), "--out", str(answers), "--cache", str(cache),
                *base)
    assert r.returncode == 0, r.stderr
    assert len(lines(answers)) == 1


def test_the_lock_is_reentrant_within_a_process_and_released_by_the_last_holder(
        tmp_path: Path) -> None:
    a = RunLock(tmp_path, purpose="run").acquire()
    b = RunLock(tmp_path, purpose="build").acquire()
    b.release()
    assert a.held
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from dynogen.store.lock import RunLock; "
         "RunLock(sys.argv[1]).acquire()", str(tmp_path)],
        env=env(tmp_path), capture_output=True, text=True)
    assert probe.returncode != 0 and "LockedError" in probe.stderr
    a.release()
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from dynogen.store.lock import RunLock; "
         "RunLock(sys.argv[1]).acquire()", str(tmp_path)],
        env=env(tmp_path), capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
