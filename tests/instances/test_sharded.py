"""The sharded build gives what one process gives: same instances, same survivors, same counts.

Both engines run on the same run directory (copied), here with the sharded build's
steps in this process (``InlineRunner``); ``test_ray_cluster`` runs them on Ray.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.commands.build import _saved_config, build
from dynogen.compose import run_identity
from dynogen.instances.sharded import InlineRunner, ShardedBuild
from dynogen.store.instance_files import shard_files
from dynogen.store.journal import iter_jsonl
from dynogen.store.rundir import RunDir
from tests.instances.rowsets import instance_set, make_run

_COUNTS = ("status", "reason", "rows", "instances", "duplicates", "skipped",
           "truncated_around_answer", "tasks", "tasks_over_max_share")


def sharded(run: Path, *, piece_rows: int | None = None, **changes: Any) -> list[dict[str, Any]]:
    cfg = _saved_config(RunDir(run)).with_(quiet=True, **changes).validate()
    rundir = RunDir(run).open(cfg, identity=run_identity(cfg), stage="build")
    try:
        records = ShardedBuild(cfg, rundir, InlineRunner(), piece_rows=piece_rows).run()
    finally:
        rundir.close()
    assert records is not None
    return records


def local(run: Path, **changes: Any) -> list[dict[str, Any]]:
    build(run, quiet=True, handle_signals=False, **changes)
    return list(iter_jsonl(run / "builds.jsonl"))


def counts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in ("key", *_COUNTS)} for r in records]


def pair(tmp_path: Path, **kw: Any) -> tuple[Path, Path]:
    settings = {k: kw.pop(k) for k in ("max_share", "splits", "rows_per_split") if k in kw}
    run = make_run(tmp_path / "src", **kw, **settings)
    a, b = tmp_path / "local", tmp_path / "sharded"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    return a, b


@pytest.mark.parametrize("kw", [
    {},
    {"rows_per_split": 25},               # the cap falls inside a file, and inside a JSON file
    {"rows_per_split": "all", "rows": 60},
    {"max_share": 0.3},                   # caps by commit order over all tasks
    {"splits": "all"},                    # test splits included
    {"broken": True},                     # one unreadable file: the whole unit is unavailable
    {"seed": 7, "dup_every": 2, "files": 3, "row_group": 3},
], ids=["default", "cap25", "all", "max_share", "all_splits", "broken", "dups"])
def test_sharded_equals_one_process(tmp_path: Path, kw: dict[str, Any]) -> None:
    a, b = pair(tmp_path, **kw)
    want = local(a)
    got = sharded(b, piece_rows=10)
    assert instance_set(b) == instance_set(a)
    assert counts(got) == counts(want)
    assert shard_files(b) and not (b / "instances.jsonl").exists()


def test_the_copy_that_survives_is_the_one_one_process_keeps(tmp_path: Path) -> None:
    a, b = pair(tmp_path)
    local(a)
    sharded(b, piece_rows=5)
    survivors = {r["dataset"] for r in map(orjson.loads, instance_set(b))
                 if r["instruction"] == "Classify the sentiment of the review."}
    assert survivors == {"reviews_a"}  # reviews_b holds the same rows, committed later


def test_broken_unit_is_unavailable_in_both(tmp_path: Path) -> None:
    a, b = pair(tmp_path, broken=True)
    want = {r["key"]: r for r in local(a)}
    got = {r["key"]: r for r in sharded(b, piece_rows=10)}
    assert want["broken::default"]["status"] == got["broken::default"]["status"] == "unavailable"
    assert got["broken::default"]["reason"] == "load_error"


class Killed(Exception):
    """Stands for the driver dying after ``after`` results."""


class Dying:
    """Runs specs inline, and dies (raises) after ``after`` of them; counts what it ran."""

    def __init__(self, after: int | None = None) -> None:
        self.after = after
        self.ran: list[str] = []

    def map(self, fn: Any, specs: Any) -> Any:
        for spec in specs:
            if self.after is not None and len(self.ran) >= self.after:
                raise Killed
            self.ran.append(spec["out"])
            yield fn(spec)


def _files(run: Path) -> dict[str, tuple[int, int]]:
    folder = run / "instances"
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*.parquet")}


@pytest.mark.parametrize("phase", [1, 2])
def test_a_killed_build_redoes_only_what_is_missing(tmp_path: Path, phase: int) -> None:
    a, b = pair(tmp_path, rows=60)
    local(a)
    cfg = _saved_config(RunDir(b)).with_(quiet=True).validate()

    def job(rundir: RunDir, runner: Any) -> ShardedBuild:
        return ShardedBuild(cfg, rundir, runner, piece_rows=10, per_partition=40)

    def attempt(runner: Dying) -> list[dict[str, Any]] | None:
        rundir = RunDir(b).open(cfg, identity=run_identity(cfg), stage="build")
        try:
            return job(rundir, runner).run()
        finally:
            rundir.close()

    units, parts = job(RunDir(b), None).plan()
    pieces = sum(len(u.specs) for u in units)
    assert pieces > 10 and parts > 3
    after = 3 if phase == 1 else pieces + 2

    first = Dying(after)
    with pytest.raises(Killed):
        attempt(first)
    before = _files(b)
    assert len(before) == after  # every finished piece or partition is on disk, whole
    second = Dying()
    records = attempt(second)
    assert records is not None
    assert not set(first.ran) & set(second.ran)  # nothing done twice
    after_files = {k: v for k, v in _files(b).items() if k in before}
    assert after_files == {k: v for k, v in before.items() if k in after_files}
    assert instance_set(b) == instance_set(a)
    assert counts(records) == counts(list(iter_jsonl(a / "builds.jsonl")))


@pytest.mark.parametrize("rows", [50, 200, "all"])
async def test_hub_units_build_the_same_sharded(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path, rows: int | str) -> None:
    """Hub datasets: the same instances and counts as one process, read whole through the
    Hub row reader on a worker (a page or less a split), or cut into row-group pieces of
    their Parquet conversion (over a page: 200, all)."""
    import asyncio

    from huggingface_hub import constants

    from dynogen.api import EXIT, arun
    from dynogen.config import Config
    from dynogen.testing import FakeOpenAI, serve
    from dynogen.testing.fake_hub import FakeHub
    from tests.instances.rowsets import hub_unit, shard

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-dynogen-test")
    fake = FakeHub()
    # one file a split, of row groups of 20 rows (files found by name past the first
    # are the single-process reader's guess, which tests/io/test_hub_pieces.py covers)
    units = [hub_unit(fake, f"org/set{i:02d}", 150, rows_of=f"thing {i % 3}",
                      row_group_size=20) for i in range(6)]
    src = shard(tmp_path / "units.jsonl", units)
    with fake.running() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        async with serve(FakeOpenAI()) as llm:
            cfg = Config(source=src, out=str(tmp_path / "a"), base_url=llm.url, free=True,
                         quiet=True, max_in_flight=8, hub_viewer_url=hub.viewer_url,
                         hub_rpm=None, rows_per_split=rows)
            done = await arun(cfg, build=False)
        assert done.exit_code == EXIT["ok"], done.message
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        want = await asyncio.to_thread(local, tmp_path / "a")
        cfg = _saved_config(RunDir(tmp_path / "b")).with_(quiet=True).validate()
        plan, _ = await asyncio.to_thread(
            ShardedBuild(cfg, RunDir(tmp_path / "b"), InlineRunner(), piece_rows=30).plan)
        got = await asyncio.to_thread(sharded, tmp_path / "b", piece_rows=30)
    kinds = [sorted({"hub_piece" if "hub_piece" in s else "unit" for s in u.specs})
             for u in plan]
    if rows == 50:  # one page a split: the whole unit, through the viewer, as one process
        assert kinds == [["unit"]] * 6 and all(len(u.specs) == 1 for u in plan)
    else:  # train's 150 rows in pieces of two 20-row groups (test is not allowed)
        assert kinds == [["hub_piece"]] * 6 and all(len(u.specs) >= 3 for u in plan)
    assert [r["status"] for r in got] == ["built"] * 6
    assert counts(got) == counts(want)
    assert instance_set(tmp_path / "b") == instance_set(tmp_path / "a")
    assert sum(r["duplicates"] for r in got) > 0  # rows shared across datasets


def test_a_seed_of_earlier_hashes_counts_as_duplicates_in_both(tmp_path: Path) -> None:
    """A collection's earlier versions: what they hold is a duplicate here too."""
    from dynogen.dedup import HashSet
    from dynogen.instances.build import build_instances, instance_dict_hash

    a, b = pair(tmp_path)
    earlier = tmp_path / "earlier"
    shutil.copytree(a, earlier)
    local(earlier)
    seen = HashSet()
    for i, rec in enumerate(iter_jsonl(earlier / "instances.jsonl")):
        if i % 3 == 0:
            seen.add(instance_dict_hash(rec))
    cfg = _saved_config(RunDir(a)).with_(quiet=True).validate()
    seeded_local = HashSet()
    for h in seen:
        seeded_local.add(h)
    rundir = RunDir(a).open(cfg, identity=run_identity(cfg), stage="build")
    try:
        build_instances(cfg, rundir, seen=seeded_local)
    finally:
        rundir.close()
    rundir = RunDir(b).open(cfg, identity=run_identity(cfg), stage="build")
    try:
        records = ShardedBuild(cfg, rundir, InlineRunner(), seen=seen, piece_rows=10,
                               per_partition=50).run()
    finally:
        rundir.close()
    assert records is not None
    assert instance_set(b) == instance_set(a)
    assert counts(records) == counts(list(iter_jsonl(a / "builds.jsonl")))
    assert len(instance_set(b)) < len(instance_set(earlier))


def test_a_run_holds_one_engines_output(tmp_path: Path) -> None:
    """Building with the other engine replaces the instances rather than adding to them."""
    a, b = pair(tmp_path)
    local(b)
    sharded(b)
    assert not (b / "instances.jsonl").exists() and not (b / "builds.jsonl").exists()
    local(b)
    assert not (b / "instances").exists()
    local(a)
    assert instance_set(b) == instance_set(a)


def test_a_spoiled_candidate_or_shard_is_counted_and_done_again(tmp_path: Path) -> None:
    """A file an earlier session left that cannot be read (a failing disk, a hand edit)
    is removed, counted in ``written["spoiled"]`` and written again: never a traceback."""
    a, b = pair(tmp_path, rows=60)
    local(a)
    cfg = _saved_config(RunDir(b)).with_(quiet=True).validate()

    def attempt(runner: Any) -> ShardedBuild:
        rundir = RunDir(b).open(cfg, identity=run_identity(cfg), stage="build")
        try:
            job = ShardedBuild(cfg, rundir, runner, piece_rows=10, per_partition=40)
            with pytest.raises(Killed) if isinstance(runner, Dying) else nullcontext():
                job.run()
            return job
        finally:
            rundir.close()

    units, _ = ShardedBuild(cfg, RunDir(b), InlineRunner(), piece_rows=10,
                            per_partition=40).plan()
    attempt(Dying(sum(len(u.specs) for u in units) + 2))  # all pieces and two partitions
    folder = b / "instances"
    (next((folder / ".candidates").glob("*.parquet"))).write_bytes(b"PAR1 torn")
    next(folder.glob("part-*.parquet")).write_bytes(b"")
    job = attempt(InlineRunner())
    assert job.written["spoiled"] == 2
    assert job.written["candidates"] == 1 and job.written["partitions"] >= 2
    assert instance_set(b) == instance_set(a)

