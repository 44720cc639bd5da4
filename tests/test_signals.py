"""Ctrl-C, SIGTERM, hostile metadata and secrets, against the real CLI in a subprocess (issue #4).

- First SIGINT/SIGTERM: dispatch stops, requests in flight finish (their
  answers are cached), report.json is written, exit 130 with a message that
  says how to resume; a second SIGINT exits at once. Either way, running the
  same command again completes and equals an uninterrupted run.
- Invalid YAML, ``../`` config names and data paths, unicode names and a
  symlink out of the source: the run goes on, counts each with a reason, and
  writes nothing outside ``--out`` (bar the ``datasets`` cache).
- An API key never lands in any file the run writes, nor in its output, even
  when the server answers 401 or 500 and echoes the key back.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from dynogen.testing import FakeOpenAI, FakeProcess, Fault, serve, start_fake_process
from tests.helpers import (
    card,
    lines,
    run_env,
    same_output,
    wait_until,
    wait_until_async,
    write_source,
)

CANARY = "sk-canary-7f3a9c1e5b2d4f60-do-not-log"
CLI = [sys.executable, "-m", "dynogen", "run", "--free", "--quiet", "--max-in-flight", "4"]
# Seconds the fake holds answers in a second-SIGINT test: past any step of the test, short
# of the grace a first signal gives answers in flight (api.SIGNAL_GRACE_SECONDS).
HELD = 15.0


# ------------------------------------------------------------------------ signals


@pytest.fixture(scope="module")
def fast() -> Iterator[FakeProcess]:
    with start_fake_process(seed=1) as proc:
        yield proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, fast: FakeProcess) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("signals")
    write_source(tmp / "src", 16)
    out = tmp / "ref"
    r = subprocess.run([*CLI, "--source", str(tmp / "src"), "--out", str(out), "--base-url",
                        fast.url], env=run_env(tmp), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return tmp / "src", out


def _answers_kept(out: Path) -> int:
    """Answers in the run's cache, read while the run writes it (0 until it can be read)."""
    try:
        with sqlite3.connect(f"file:{out / 'cache.sqlite'}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_dispatch_finishes_in_flight_then_resume_equals_uninterrupted(
        tmp_path: Path, sig: signal.Signals, fast: FakeProcess,
        reference: tuple[Path, Path]) -> None:
    src, ref = reference
    out = tmp_path / "out"
    with start_fake_process(latency_median=0.6, seed=2) as slow:
        p = subprocess.Popen([*CLI, "--source", str(src), "--out", str(out), "--base-url",
                              slow.url], env=run_env(tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        wait_until(lambda: slow.stats()["totals"]["requests"] >= 2, "two requests in flight")
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=30)
        sent = slow.stats()["totals"]["requests"]
    assert p.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command again to resume" in stderr.lower()
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["session"]["stop_reason"] == "interrupted"
    assert report["units"]["seen"] < 16  # it stopped early
    # Every request that reached the server was answered and its answer kept:
    # none was abandoned mid-flight, so none is paid twice on resume.
    with sqlite3.connect(out / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == sent

    before = fast.stats()["totals"]["requests"]
    r = subprocess.run([*CLI, "--source", str(src), "--out", str(out), "--base-url", fast.url],
                       env=run_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    same_output(out, ref)
    assert fast.stats()["totals"]["requests"] - before == 32 - sent  # cached ones not re-sent


async def test_a_second_sigint_exits_at_once_and_resume_still_equals_uninterrupted(
        tmp_path: Path, fast: FakeProcess, reference: tuple[Path, Path]) -> None:
    src, ref = reference
    out = tmp_path / "out"
    # The first answer comes a second after its request; every later one is held HELD s,
    # so after the first SIGINT the run has answers in flight to wait for.
    slow = FakeOpenAI()
    slow.enqueue(Fault.slow(1.0), *[Fault.slow(HELD)] * 64)
    async with serve(slow) as server:
        p = await asyncio.create_subprocess_exec(
            *CLI, "--source", str(src), "--out", str(out), "--base-url", server.url,
            env=run_env(tmp_path), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        await wait_until_async(lambda: slow.stats.requests >= 4, "four requests in flight")
        p.send_signal(signal.SIGINT)

        def kept_the_next_answer() -> bool:
            assert p.returncode is None, "the first SIGINT ended the run"
            return _answers_kept(out) >= 1

        # The first signal only stops dispatch: the run still keeps the answer that
        # arrives after it, and goes on waiting for the held ones.
        await wait_until_async(kept_the_next_answer,
                               "the run to keep the answer that came after the first SIGINT")
        p.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(p.wait(), 60)
    assert code == 130
    # It left without the held answers: had it waited for them it would have kept them
    # (HELD s is well within the first signal's grace), as the first signal alone does.
    assert _answers_kept(out) == 1
    r = subprocess.run([*CLI, "--source", str(src), "--out", str(out), "--base-url", fast.url],
                       env=run_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    same_output(out, ref)


# ------------------------------------------------------------------------ hostile metadata


def _tree(root: Path, skip: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if skip in p.parents or p == skip or p.is_symlink() or not p.is_file():
            continue
        out[str(p.relative_to(root))] = p.read_bytes()
    return out


def test_hostile_metadata_is_counted_and_nothing_is_written_outside_out(
        tmp_path: Path, fast: FakeProcess) -> None:
    src = tmp_path / "src"
    write_source(src, 2)
    (src / "broken").mkdir()
    (src / "broken" / "README.md").write_text("---\ndataset_info: [unclosed\n  - {\n---\nx\n")
    trav = src / "traversal"
    (trav / "data").mkdir(parents=True)
    (trav / "README.md").write_text(
        "---\ndataset_info:\n- config_name: ../../etc\n  features:\n  - name: a\n"
        "    dtype: string\n  - name: b\n    dtype: string\nconfigs:\n"
        "- config_name: ../../etc\n  data_files:\n  - split: train\n"
        "    path: ../../../../etc/hostname\n---\n\nEscapes.\n")
    uni = src / "données" / "日本語 データ"
    (uni / "data").mkdir(parents=True)
    (uni / "README.md").write_text(card(["文章", "ラベル"], "Sätze mit Etiketten. 短い文。"))
    (uni / "data" / "train.jsonl").write_text(
        '{"文章": "こんにちは", "ラベル": "a"}\n{"文章": "さようなら", "ラベル": "b"}\n',
        encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "README.md").write_text(card(["x", "y"]))
    (src / "link").symlink_to(outside, target_is_directory=True)

    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    before = _tree(tmp_path, out)
    r = subprocess.run([*CLI, "--source", str(src), "--out", str(out), "--base-url", fast.url],
                       env=run_env(tmp_path), cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    after = _tree(tmp_path, out)
    # Outside --out only the `datasets` library's cache (HF_HOME) may gain files
    # (empty .lock files from streaming local rows); nothing else is written or changed.
    assert {k: v for k, v in after.items() if not k.startswith("hf-home/")} == before
    assert not any(cwd.iterdir())
    assert not (tmp_path.parent / "etc").exists()
    units = {orjson.loads(x)["key"]: orjson.loads(x) for x in lines(out / "units.jsonl")}
    assert units["broken::"]["reason"] == "invalid_metadata"
    assert units["link::"]["reason"] == "invalid_metadata"
    assert units["données/日本語 データ::default"]["status"] == "done"
    assert any(k.startswith("traversal::") for k in units)
    built = {orjson.loads(x)["key"]: orjson.loads(x) for x in lines(out / "builds.jsonl")}
    assert built.get("données/日本語 データ::default", {}).get("status") == "built"
    assert all(orjson.loads(x)["dataset"] != "link" for x in lines(out / "instances.jsonl"))


# ------------------------------------------------------------------------ secrets


def _leaks(tmp: Path, *texts: str) -> list[str]:
    found = [str(p) for p in tmp.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    return found + [f"output {i}" for i, t in enumerate(texts) if CANARY in t]


@pytest.mark.parametrize("answer", [
    Fault.http(401, {"error": {"message": f"Incorrect API key provided: {CANARY}.",
                               "type": "invalid_request_error", "code": "invalid_api_key"}}),
    Fault.http(500, f"upstream said: Authorization: Bearer {CANARY}"),
], ids=["401", "500"])
async def test_the_api_key_never_reaches_a_file_or_the_output(tmp_path: Path,
                                                              answer: Fault) -> None:
    src = tmp_path / "src"
    write_source(src, 3)
    cfg = tmp_path / "dynogen.toml"
    cfg.write_text("max_retries = 1\nretry_base_delay = 0.01\nretry_max_delay = 0.02\n")
    fake = FakeOpenAI()
    fake.enqueue(*[answer] * 12)
    async with serve(fake) as server:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "--source", str(src), "--out", str(tmp_path / "out"), "--base-url", server.url,
            "--config", str(cfg), "--cache", str(tmp_path / "shared-cache.sqlite"),
            env=run_env(tmp_path, OPENAI_API_KEY=CANARY), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert fake.history and all(r.headers["authorization"] == f"Bearer {CANARY}"
                                for r in fake.history)  # the key was really in use
    assert proc.returncode in (0, 4), stderr
    assert _leaks(tmp_path, stdout.decode(), stderr.decode()) == []
