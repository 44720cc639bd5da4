"""Runs you can watch: status.json while a run goes, run.log, plain progress off a terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from dynogen.progress import Plain
from dynogen.store.status import read_status, write_status
from dynogen.testing import start_fake_process
from tests.helpers import REPO, run_env

ROOT = REPO


def _env(tmp: Path) -> dict[str, str]:
    return run_env(tmp, OPENAI_API_KEY="sk-watch-secret-0123456789")


def _source(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"set_{i:02d}"
        d.mkdir(parents=True)
        (d / "README.md").write_text(
            f"---\nlicense: mit\ndataset_info:\n  features:\n  - name: text_{i}\n"
            f"    dtype: string\n  - name: label\n    dtype: string\n---\n\n"
            f"Sentences about thing {i}, each with a label.\n")


def _status_cli(out: Path, tmp: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "dynogen", "status", str(out)], cwd=ROOT,
                       env=_env(tmp), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_status_changes_while_a_run_goes_and_stderr_to_a_file_has_no_carriage_returns(
        tmp_path: Path) -> None:
    _source(tmp_path / "src", 10)
    out, err = tmp_path / "run", tmp_path / "stderr.txt"
    with start_fake_process(latency_median=0.35) as fake, err.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynogen", "run", "--source", str(tmp_path / "src"),
             "--out", str(out), "--base-url", fake.url, "--free", "--max-in-flight", "1"],
            cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=fh)
        seen: list[int] = []
        shown: list[str] = []
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            status = read_status(out)  # another terminal: no lock, any moment
            if status is not None and status["stage"] == "tasks":
                done = status["units"]["done"]
                if not seen or done != seen[-1]:
                    seen.append(done)
                if not shown:  # `dynogen status` from a second terminal, mid-run
                    shown.append(_status_cli(out, tmp_path))
            time.sleep(0.1)  # polling interval, not a wait for something to happen
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    shown.append(_status_cli(out, tmp_path))
    assert ": tasks" in shown[0] and "units" in shown[0]
    assert ": done" in shown[-1] and "10 done" in shown[-1]
    assert len(seen) >= 2 and seen == sorted(seen), seen  # progress moved, forward
    final = read_status(out)
    assert final is not None and final["stage"] == "done"
    assert final["units"]["done"] == 10 and final["written_by_pid_alive"] is False
    text = err.read_bytes()
    assert b"\r" not in text and b"tasks:" in text  # plain lines, not a redrawn bar
    log = (out / "run.log").read_text()
    assert "start: dynogen" in log and "end (exit 0)" in log
    for name in ("run.log", "status.json", "manifest.json", "report.json"):
        assert b"sk-watch-secret" not in (out / name).read_bytes(), name


def test_a_spoiled_or_missing_status_reads_as_none(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_bytes(b'{"stage": "tas')
    assert read_status(tmp_path) is None
    assert write_status(tmp_path, {"stage": "tasks", "pid": os.getpid()})
    got = read_status(tmp_path)
    assert got is not None and got["stage"] == "tasks" and got["written_by_pid_alive"]
    assert orjson.loads((tmp_path / "status.json").read_bytes())["stage"] == "tasks"


def test_plain_progress_prints_a_line_every_interval_and_at_the_end() -> None:
    now = [0.0]
    buf = io.StringIO()
    p = Plain("tasks", total=4, rpm=600, budget=1.0, every=30.0, file=buf,
              clock=lambda: now[0])
    for _ in range(4):
        now[0] += 20.0
        p.request_done(100, 0.001)
        p.unit_done()
    p.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # at 40 s, at 80 s, and the close
    assert lines[-1].startswith("tasks: 4/4 units") and "$0.0040/1.00" in lines[-1]
    assert "\r" not in buf.getvalue()
