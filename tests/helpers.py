"""Helpers shared by several test files: paths, a run's environment, a small source
of dataset folders, comparing run outputs, and waiting on a condition.

Test files import from here, never from each other.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

__all__ = ["FIXTURES", "REPO", "TESTS", "build_sharded", "built_both", "journals_consistent",
           "lines",
           "rows_of", "run_clocked", "run_env", "same_output", "shard_instances", "tasks_run",
           "wait_until", "wait_until_async", "write_source"]

T = TypeVar("T")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"

# ------------------------------------------------------------------------ waiting

POLL = 0.01  # seconds between two looks at the condition
DEADLINE = 60.0  # generous: it only ends a test that is already failing


def _poll_times(timeout: float, what: str) -> Callable[[], None]:
    deadline = time.monotonic() + timeout

    def check() -> None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")

    return check


def wait_until(predicate: Callable[[], object], what: str, *, timeout: float = DEADLINE,
               interval: float = POLL) -> None:
    """Look at ``predicate`` every ``interval`` s until it is true; fail naming ``what``
    once ``timeout`` s have passed.

    For tests that drive a real process or thread (kill it mid-run, signal it): the
    test goes on as soon as the condition holds, never after a fixed time. A
    predicate may raise ``AssertionError`` itself to fail early (the process died).
    """
    expired = _poll_times(timeout, what)
    while not predicate():
        expired()
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], object], what: str, *,
                           timeout: float = DEADLINE, interval: float = POLL) -> None:
    """``wait_until`` for a coroutine: the event loop runs while it waits."""
    expired = _poll_times(timeout, what)
    while not predicate():
        expired()
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------ a run's inputs


async def run_clocked(clock: Any, aw: Awaitable[T], idle: Callable[[], bool]) -> T:
    """Run ``aw`` over real sockets, moving the fake clock (``ratelimit.FakeClock``) to its
    next deadline only when no call is on the wire (``idle()``): waits, pacing and
    retries take no real time."""
    task = asyncio.ensure_future(aw)
    while not task.done():
        await asyncio.wait({task}, timeout=0.005)
        if not task.done() and idle() and clock.next_deadline is not None:
            await clock.advance_to(clock.next_deadline)
    return task.result()


def run_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``dynogen`` subprocess: offline, its own HF cache, no API
    settings inherited from the caller (``extra`` adds some back)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp / "hf-home"),
               **extra)
    return env


def card(fields: list[str], body: str = "Short texts, each with a label.") -> str:
    """A dataset card with string ``fields`` and one training split in data/train.jsonl."""
    feats = "".join(f"  - name: {f}\n    dtype: string\n" for f in fields)
    return (f"---\nlicense: mit\ndataset_info:\n  features:\n{feats}configs:\n"
            "- config_name: default\n  data_files:\n  - split: train\n"
            f"    path: data/train.jsonl\n---\n\n{body}\n")


def write_source(root: Path, n: int) -> None:
    """``n`` dataset folders under ``root``, each a card and four rows."""
    for i in range(n):
        d = root / f"set_{i:02d}"
        (d / "data").mkdir(parents=True)
        cols = [f"text_{i}", "label"]
        (d / "README.md").write_text(card(cols, f"Sentences about thing {i}, with a label."))
        (d / "data" / "train.jsonl").write_bytes(b"".join(
            orjson.dumps({cols[0]: f"thing {i} sentence {j}", "label": "ab"[j % 2]}) + b"\n"
            for j in range(4)))


# ------------------------------------------------------------------------ a run's outputs


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def same_output(got: Path, want: Path) -> None:
    """Two run directories hold the same tasks, instances and report totals."""
    for name in ("tasks.jsonl", "instances.jsonl"):
        assert lines(got / name) == lines(want / name) != [], name
    g = orjson.loads((got / "report.json").read_bytes())
    w = orjson.loads((want / "report.json").read_bytes())
    for k in ("units", "tasks"):
        assert g[k] == w[k], k
    assert g["instances"]["written"] == w["instances"]["written"]


def journals_consistent(out: Path) -> None:
    """Every journal line is whole and points at data that is there."""
    for journal, data, end, count in (("units.jsonl", "tasks.jsonl", "tasks_end", "tasks_kept"),
                                      ("builds.jsonl", "instances.jsonl", "instances_end",
                                       "instances")):
        size = (out / data).stat().st_size if (out / data).exists() else 0
        raw = (out / journal).read_bytes() if (out / journal).exists() else b""
        assert not raw or raw.endswith(b"\n"), f"{journal} ends in a torn line"
        recs = [orjson.loads(x) for x in raw.splitlines()]
        ends = [r[end] for r in recs if end in r]
        assert all(e <= size for e in ends), f"{journal} points past the end of {data}"
        if ends:
            want = sum(r.get(count) or 0 for r in recs)
            assert (out / data).read_bytes()[:ends[-1]].count(b"\n") == want


# ------------------------------------------------------------ the sharded engine's output


def tasks_run(out: Path, **settings: Any) -> Path:
    """A run directory over the bundled samples with its tasks done and no instances built
    (the fake model answers; ``settings`` override the config)."""
    from dynogen.api import arun
    from dynogen.config import Config
    from dynogen.testing import FakeOpenAI, serve

    async def go() -> None:
        async with serve(FakeOpenAI()) as server:
            cfg = Config(**{**dict(source="samples", out=str(out), base_url=server.url,
                                   model="gpt-4o-mini", quiet=True, free=True, licenses="any",
                                   languages="any", splits="all", rows_per_split=5),
                            **settings})
            outcome = await arun(cfg, build=False)
        assert outcome.exit_code == 0, outcome.message

    asyncio.run(go())
    return out


def build_sharded(target: Path, **kw: Any) -> Any:
    """``dynogen build TARGET --engine ray`` with the steps run in this process, not on Ray."""
    from dynogen.api import build
    from dynogen.instances.sharded import InlineRunner

    return build(target, engine="ray", runner=InlineRunner(), quiet=True, handle_signals=False,
                 **kw)


def built_both(tmp: Path) -> tuple[Path, Path]:
    """The same run's tasks built twice: by one process (``tmp/local``), and by the sharded
    engine (``tmp/sharded``)."""
    import shutil

    from dynogen.api import build

    local = tasks_run(tmp / "local")
    sharded = tmp / "sharded"
    shutil.copytree(local, sharded)
    assert build(local, quiet=True, handle_signals=False).exit_code == 0
    assert build_sharded(sharded).exit_code == 0
    assert not (sharded / "instances.jsonl").exists()
    assert list((sharded / "instances").glob("part-*.parquet"))
    return local, sharded


def shard_instances(run: Path) -> Path:
    """Turn a run's ``instances.jsonl`` into ``instances/part-00000.parquet``, as a sharded
    build would leave the same instances (what every reader sees of one)."""
    import pyarrow as pa

    from dynogen.store.instance_files import instance_schema, write_instance_shard
    from dynogen.store.journal import iter_jsonl

    records = list(iter_jsonl(run / "instances.jsonl"))
    table = pa.Table.from_pylist(records, schema=instance_schema()) if records else None
    write_instance_shard(run / "instances" / "part-00000.parquet", table)
    (run / "instances.jsonl").unlink()
    return run


def rows_of(records: Iterable[dict[str, Any]]) -> list[bytes]:
    """Records as sorted canonical JSON: equal for the same rows in any order."""
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


# ---------------------------------------------------------------- the reference corpus

# The reference corpus lies in shared/ beside the checkout (CI lays a copy there); a
# checkout elsewhere (a worktree) finds the one beside the main checkout.
CORPUS_PLACES = (REPO.parent / "shared/hf-metadata-2022/datasets",
                 Path("/work/shared/hf-metadata-2022/datasets"))
CORPUS = next((p for p in CORPUS_PLACES if p.is_dir()), CORPUS_PLACES[0])


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need_corpus() -> Path:
    """The reference corpus; missing, it fails the test under CI and skips it elsewhere."""
    if not CORPUS.is_dir():
        where = " or ".join(str(p) for p in CORPUS_PLACES)
        if under_ci():
            pytest.fail(f"the reference corpus is missing: no folder at {where} "
                        "(CI must lay hf-metadata-2022 in ../shared/ beside the checkout)",
                        pytrace=False)
        pytest.skip(f"reference corpus absent (no {where}); under CI this fails")
    return CORPUS
