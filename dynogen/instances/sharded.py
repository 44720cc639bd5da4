"""The sharded build: the instance stage cut into pieces any worker can do.

``dynogen build --engine ray`` runs it on a Ray cluster (``ray_runner``); tests
and small builds run the same steps in one process (``InlineRunner``). It gives
the same set of instances as the single-process ``InstanceBuilder``, down to
which copy of a duplicate survives, in three steps:

1. **Plan** (here, on the driver): the units with tasks in commit order, the
   ``max_share`` caps applied over all of them, each local unit's row files cut
   into pieces (``io.row_files``; a Hub unit is one piece, read through the
   ``RowReader``), and the number of hash partitions. The plan's digest is kept
   in ``instances/.plan``: a different plan (new rows, new settings) starts the
   sharded output over.
2. **Candidates** (``candidates.build_candidates``, one task per piece): the
   piece's rows with the unit's tasks applied, written as
   ``instances/.candidates/u<unit>-<split>-<file>-<row group>.parquet``.
   Which tasks are degenerate (one output for every row) and which units could
   not be read is decided here from every piece's counts.
3. **Merge** (``merge.merge_partition``, one task per hash partition): the
   first copy of every instance by order key, written as
   ``instances/part-NNNNN.parquet``.

Every file is written whole and renamed into place, and a step skips what is
already there, so a killed build run again redoes only the missing pieces and
partitions; ``instances/builds.jsonl`` (one record per unit, as the
single-process build journals them) is written last, and the candidates are
removed once every unit is settled. Output order differs from
``instances.jsonl``; content does not.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import xxhash

from dynogen.config import ALL_ROWS, Config
from dynogen.dedup import HashSet
from dynogen.instances.apply import is_degenerate
from dynogen.instances.build import _Todo, committed_units
from dynogen.instances.candidates import build_candidates, candidate_meta, load_tasks
from dynogen.instances.merge import merge_partition, shard_meta
from dynogen.io.hub_parquet import ParquetFooter
from dynogen.io.hub_pieces import plan_hub_pieces
from dynogen.io.hub_rows import PAGE_ROWS, HubRowReader, environment_token
from dynogen.io.row_files import PIECE_ROWS, list_row_files, plan_pieces
from dynogen.io.row_reader import is_local
from dynogen.io.rows import RowsUnavailable
from dynogen.policy.splits import SplitPolicy
from dynogen.progress import make_progress
from dynogen.store.instance_files import SHARD_DIR, shard_files
from dynogen.store.journal import iter_jsonl
from dynogen.store.rundir import RunDir
from dynogen.store.storage import atomic_write
from dynogen.tasks.task import Task
from dynogen.units import redo

__all__ = ["CANDIDATES_PER_PARTITION", "InlineRunner", "Runner", "ShardedBuild", "build_records"]

CANDIDATES_PER_PARTITION = 500_000  # about what one merge task holds in memory


class Runner(Protocol):
    """Runs one function over many specs somewhere; results come back in any order."""

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]],
            specs: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]: ...


class InlineRunner:
    """Every spec in this process, one after another (tests, and builds too small for more)."""

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]],
            specs: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for spec in specs:
            yield fn(spec)


@dataclass(slots=True)
class _Unit:
    index: int
    todo: _Todo
    tasks: list[Task] = field(default_factory=list)  # the ones that build
    status: str | None = None  # set when the unit builds nothing: capped, no_rows, ...
    reason: str | None = None
    detail: str = ""
    specs: list[dict[str, Any]] = field(default_factory=list)


class ShardedBuild:
    """One sharded build of ``rundir`` (opened by the caller); ``run`` returns the unit
    records (``builds.jsonl`` lines) or ``None`` when ``stop`` ended it first."""

    def __init__(self, cfg: Config, rundir: RunDir, runner: Runner, *,
                 seen: HashSet | None = None, piece_rows: int | None = None,
                 per_partition: int = CANDIDATES_PER_PARTITION) -> None:
        self.cfg = cfg
        self.rundir = rundir
        self.runner = runner
        self.seen = seen
        self.piece_rows = piece_rows
        self.per_partition = max(1, per_partition)
        self.folder = rundir.path / SHARD_DIR
        self.candidates = self.folder / ".candidates"
        self.journal = self.folder / "builds.jsonl"
        self.policy = SplitPolicy.parse(cfg.splits)
        self.cache_dir = str(rundir.path / ".hf-cache")
        # files written this session; "spoiled": found unreadable, removed and done again
        self.written: dict[str, int] = {"candidates": 0, "partitions": 0, "spoiled": 0}
        self._stopping = False
        self._seed: Any = None

    def stop(self) -> None:
        """Start no more pieces or partitions; what is written stays for the next build."""
        self._stopping = True

    # ------------------------------------------------------------------ plan
    def plan(self) -> tuple[list[_Unit], int]:
        todos = committed_units(self.cfg, self.rundir, caps=True)
        units: list[_Unit] = []
        hub: list[tuple[_Unit, str, dict[str, Any]]] = []
        estimate = 0
        for i, todo in enumerate(todos):
            unit = _Unit(i, todo)
            units.append(unit)
            tasks = unit.tasks = load_tasks(str(self.rundir.tasks), todo.tasks_start,
                                            todo.tasks_end, todo.keep)
            if not tasks:
                unit.status = "capped"
                continue
            if not todo.data_ref:
                unit.status, unit.reason = "no_rows", "no_data_ref"
                continue
            config = todo.config or tasks[0].config
            base = {"tasks": str(self.rundir.tasks), "tasks_start": todo.tasks_start,
                    "tasks_end": todo.tasks_end, "keep": todo.keep, "unit": i}
            if not is_local(todo.data_ref) and self.cfg.rows_to_read > PAGE_ROWS:
                hub.append((unit, config, base))  # cut by file and row group, below
                continue
            if not is_local(todo.data_ref):  # a page or less a split: read as one process does
                unit.specs.append({**base, "out": str(self.candidates / f"u{i:06d}-hub.parquet"),
                                   "unit_rows": {
                                       "data_ref": todo.data_ref, "config": config,
                                       "splits": list(todo.splits), "split_policy": self.cfg.splits,
                                       "rows_per_split": self.cfg.rows_to_read,
                                       "cache_dir": self.cache_dir,
                                       # each worker reads under buckets of its own
                                       "hub_rpm": self.cfg.hub_rpm,
                                       "hub_concurrency": self.cfg.hub_concurrency,
                                       "viewer_url": self.cfg.hub_viewer_url}})
                estimate += len(tasks) * min(self.cfg.rows_to_read, 1_000_000)
                continue
            try:
                files = list_row_files(todo.data_ref, config, splits=todo.splits or None,
                                       allow=self.policy.allows, cache_dir=self.cache_dir)
                kw = {"piece_rows": self.piece_rows} if self.piece_rows else {}
                pieces = plan_pieces(files, None if self.cfg.rows_per_split == "all"
                                     else self.cfg.rows_to_read, **kw)
            except RowsUnavailable as e:
                unit.status = "retryable" if e.retryable else "unavailable"
                unit.reason, unit.detail = e.reason, e.detail[:300]
                continue
            labels = {k: list(v) for k, v in files.info.labels.items()}
            for piece in pieces:
                unit.specs.append({**base, "out": str(self.candidates / f"u{i:06d}-{piece.name}"
                                                                         ".parquet"),
                                   "labels": labels, "file_index": piece.file_index,
                                   "source": files.ref.to_dict(), "piece": piece.to_dict()})
                rows = piece.limit if piece.limit is not None else piece.rows
                estimate += len(tasks) * (rows if rows is not None else _guess_rows(piece.path))
        if hub:
            estimate += self._plan_hub(hub)
        parts = max(1, min(4096, math.ceil(estimate / self.per_partition)))
        for unit in units:
            for spec in unit.specs:
                spec["parts"] = parts
        return units, parts

    def _plan_hub(self, hub: list[tuple[_Unit, str, dict[str, Any]]]) -> int:
        """Hub units cut into row-group pieces of their Parquet conversion (``io.hub_pieces``),
        listed concurrently under the Hub's buckets; returns the candidates expected."""
        import asyncio

        limit = None if self.cfg.rows_per_split == ALL_ROWS else self.cfg.rows_to_read
        hub_settings = {"hub_rpm": self.cfg.hub_rpm, "hub_concurrency": self.cfg.hub_concurrency,
                        "viewer_url": self.cfg.hub_viewer_url}

        async def plan_all() -> list[Any]:
            reader = HubRowReader.open(rpm=self.cfg.hub_rpm,
                                       concurrency=self.cfg.hub_concurrency,
                                       token=environment_token(),
                                       viewer_url=self.cfg.hub_viewer_url)
            try:
                return await asyncio.gather(*(
                    _hub_plan(reader, unit.todo.data_ref or "", config, unit.todo.splits,
                              self.policy.allows, limit, self.piece_rows or PIECE_ROWS)
                    for unit, config, _ in hub), return_exceptions=True)
            finally:
                await reader.aclose()

        estimate = 0
        for (unit, _, base), got in zip(hub, asyncio.run(plan_all()), strict=True):
            if isinstance(got, RowsUnavailable):
                unit.status = "retryable" if got.retryable else "unavailable"
                unit.reason, unit.detail = got.reason, got.detail[:300]
                continue
            if isinstance(got, BaseException):
                raise got
            info, pieces, footers = got
            labels = {k: list(v) for k, v in info.labels.items()}
            for piece in pieces:
                footer = footers.get(piece.path)
                unit.specs.append({
                    **base, "out": str(self.candidates / f"u{unit.index:06d}-{piece.name}"
                                                          ".parquet"),
                    "labels": labels, "file_index": piece.file_index,
                    "hub_piece": piece.to_dict(), "hub": hub_settings,
                    "footer": footer.to_dict() if footer is not None else None})
                rows = piece.limit if piece.limit is not None else piece.rows
                estimate += len(unit.tasks) * (rows if rows is not None else 100_000)
        return estimate

    # ------------------------------------------------------------------- run
    def run(self) -> list[dict[str, Any]] | None:
        self.rundir.take_build("ray")  # one process's instances are replaced, not mixed
        units, parts = self.plan()
        digest = _digest([parts, [[u.status, u.reason, u.specs] for u in units]])
        self.folder.mkdir(parents=True, exist_ok=True)
        if _read(self.folder / ".plan") != digest:
            self._clear()
            atomic_write(self.folder / ".plan", digest.encode())
        elif self.journal.exists() and not any(_open(r, self.cfg.retry_skipped)
                                               for r in iter_jsonl(self.journal)):
            return list(iter_jsonl(self.journal))  # built already
        metas = self._candidates(units)
        if metas is None:
            return None
        drop, degenerate, skipped = self._decide(units, metas)
        merge_digest = _digest([digest, sorted(drop), sorted(degenerate), self._seed_digest()])
        if _read(self.folder / ".merge") != merge_digest:
            for p in shard_files(self.rundir.path):
                p.unlink()
            atomic_write(self.folder / ".merge", merge_digest.encode())
        merged = self._merge(units, parts, metas, drop, degenerate)
        if merged is None:
            return None
        records = build_records(units, metas, drop, skipped, merged)
        atomic_write(self.journal, b"".join(orjson.dumps(r) + b"\n" for r in records))
        if not any(_open(r, self.cfg.retry_skipped) for r in records):
            shutil.rmtree(self.candidates, ignore_errors=True)
            shutil.rmtree(self.folder / ".seed", ignore_errors=True)
        return records

    def _clear(self) -> None:
        shutil.rmtree(self.candidates, ignore_errors=True)
        shutil.rmtree(self.folder / ".seed", ignore_errors=True)
        for p in shard_files(self.rundir.path):
            p.unlink()
        for name in (".merge", "builds.jsonl"):
            (self.folder / name).unlink(missing_ok=True)

    def _written(self, path: Path, read: Callable[[Path], dict[str, Any]],
                 ) -> dict[str, Any] | None:
        """What a file an earlier session wrote says of itself; ``None`` when there is none,
        or it cannot be read (a failing disk, a hand edit): then it is removed, counted in
        ``written["spoiled"]``, and done again."""
        if not path.exists():
            return None
        try:
            return read(path)
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            self.written["spoiled"] += 1
            return None

    def _candidates(self, units: list[_Unit]) -> dict[str, dict[str, Any]] | None:
        """Phase 1: every piece's metadata by its file name (``None``: stopped)."""
        metas: dict[str, dict[str, Any]] = {}
        todo: list[dict[str, Any]] = []
        for unit in units:
            for spec in unit.specs:
                meta = self._written(Path(spec["out"]), candidate_meta)
                if meta is not None and meta.get("error") and redo(str(meta["error"]),
                                                                   self.cfg.retry_skipped):
                    Path(spec["out"]).unlink()
                elif meta is not None:
                    metas[spec["out"]] = meta
                    continue
                todo.append(spec)
        bar = make_progress(self.cfg.quiet, "rows read", total=len(todo), unit="piece")
        try:
            for meta in self.runner.map(build_candidates, todo):
                metas[str(meta.get("out") or "")] = meta
                bar.unit_done()
                if not meta.get("error"):
                    self.written["candidates"] += 1
                if self._stopping:
                    return None
        finally:
            bar.close()
        return metas

    def _decide(self, units: list[_Unit], metas: dict[str, dict[str, Any]],
                ) -> tuple[set[int], set[int], dict[int, Counter[str]]]:
        """Units whose rows could not be read, degenerate tasks (``unit * 65536 + task``),
        and each unit's skip counts (with ``duplicates_in_pieces``: the copies phase 1
        dropped, of tasks that build)."""
        drop: set[int] = set()
        degenerate: set[int] = set()
        skipped: dict[int, Counter[str]] = {}
        for unit in units:
            if unit.status is not None:
                continue
            n = len(unit.tasks)
            built, local = [0] * n, [0] * n
            outputs: list[set[str]] = [set() for _ in range(n)]
            counts: Counter[str] = Counter()
            for spec in unit.specs:
                meta = metas.get(spec["out"])
                if meta is None:
                    continue
                if meta.get("error"):
                    if unit.status is None or (unit.status == "retryable"
                                               and not meta.get("retryable")):
                        unit.status = "retryable" if meta.get("retryable") else "unavailable"
                        unit.reason, unit.detail = str(meta["error"]), str(meta.get("detail"))
                    continue
                counts.update(meta.get("skipped") or {})
                for t, n in enumerate(meta.get("built") or ()):
                    built[t] += int(n)
                    outputs[t].update(meta["outputs"][t])
                    local[t] += int(meta["local_duplicates"][t])
            if unit.status is not None:
                drop.add(unit.index)
                continue
            for t, task in enumerate(unit.tasks):
                if built[t] and is_degenerate(task, built[t], len(outputs[t])):
                    degenerate.add(unit.index * 65536 + t)
                    counts["degenerate_constant_output"] += built[t]
                else:
                    counts["duplicates_in_pieces"] += local[t]
            skipped[unit.index] = counts
        return drop, degenerate, skipped

    def _seed_hashes(self) -> Any:
        """The collection's earlier instance hashes, sorted (an empty array: none)."""
        if self._seed is None:
            seen = self.seen if self.seen is not None else ()
            self._seed = np.sort(np.fromiter(iter(seen), dtype=np.uint64))
        return self._seed

    def _seed_digest(self) -> str:
        h = self._seed_hashes()
        return xxhash.xxh3_64_hexdigest(h.tobytes()) if len(h) else ""

    def _write_seed(self, parts: int) -> dict[int, str]:
        """The collection's earlier hashes, one file per partition (for the merge tasks)."""
        h = self._seed_hashes()
        if not len(h):
            return {}
        folder = self.folder / ".seed"
        folder.mkdir(parents=True, exist_ok=True)
        part = h % np.uint64(parts)
        out = {}
        for p in range(parts):
            path = folder / f"{p:05d}.npy"
            np.save(path, h[part == np.uint64(p)])
            out[p] = str(path)
        return out

    def _merge(self, units: list[_Unit], parts: int, metas: dict[str, dict[str, Any]],
               drop: set[int], degenerate: set[int]) -> dict[int, list[int]] | None:
        """Phase 2: per unit ``[candidates, kept, truncated]`` over all partitions."""
        by_part: dict[int, list[str]] = {p: [] for p in range(parts)}
        for name, meta in sorted(metas.items()):
            if meta.get("error") or int(meta.get("unit", -1)) in drop:
                continue
            for p in meta.get("parts") or {}:
                by_part[int(p)].append(name)
        seeds = self._write_seed(parts)
        specs: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for p in range(parts):
            out = self.folder / f"part-{p:05d}.parquet"
            spec = {"out": str(out), "part": p, "files": by_part[p], "drop_units": sorted(drop),
                    "degenerate": sorted(degenerate), "seed": seeds.get(p)}
            done = self._written(out, shard_meta)  # the counts of a partition merged before
            if done is not None:
                results.append(done)
            else:
                specs.append(spec)
        bar = make_progress(self.cfg.quiet, "deduplicated", total=len(specs), unit="partition")
        try:
            for result in self.runner.map(merge_partition, specs):
                results.append(result)
                self.written["partitions"] += 1
                bar.unit_done()
                if self._stopping and len(results) < parts:
                    return None
        finally:
            bar.close()
        totals: dict[int, list[int]] = {}
        for result in results:
            for u, (n, kept, truncated) in (result.get("units") or {}).items():
                t = totals.setdefault(int(u), [0, 0, 0])
                t[0] += n
                t[1] += kept
                t[2] += truncated
        return totals


def build_records(units: list[_Unit], metas: dict[str, dict[str, Any]], drop: set[int],
                  skipped: dict[int, Counter[str]],
                  merged: dict[int, list[int]]) -> list[dict[str, Any]]:
    """One ``builds.jsonl`` record per unit, with the single-process build's keys."""
    records = []
    for unit in units:
        rec: dict[str, Any] = {"key": unit.todo.key, "tasks": len(unit.tasks)}
        if unit.status == "capped":
            rec.update(status="capped", tasks_over_max_share=unit.todo.capped)
        elif unit.status == "no_rows":
            rec.update(status="no_rows", reason=unit.reason)
        elif unit.status is not None:
            rec.update(status=unit.status, reason=unit.reason, detail=unit.detail[:300])
        else:
            pieces = [metas[s["out"]] for s in unit.specs if s["out"] in metas]
            n, kept, truncated = merged.get(unit.index, [0, 0, 0])
            counts = Counter(skipped.get(unit.index, Counter()))
            local = counts.pop("duplicates_in_pieces", 0)
            rec.update(status="built", rows=sum(int(m.get("rows") or 0) for m in pieces),
                       instances=kept, duplicates=n - kept + local)
            if truncated:
                rec["truncated_around_answer"] = truncated
            cut = sum(int(m.get("truncated_cell") or 0) for m in pieces)
            if cut:
                counts["truncated_cell"] += cut
            if counts:
                rec["skipped"] = dict(counts)
        if unit.todo.capped and unit.tasks:
            rec["tasks_over_max_share"] = unit.todo.capped
        records.append(rec)
    return records


def _guess_rows(path: str) -> int:
    """Rows of a JSON Lines or CSV file not counted (every row is read): one per 100 bytes,
    to size the merge's partitions only."""
    try:
        return max(1, os.path.getsize(path) // 100)
    except OSError:
        return 1


async def _hub_plan(reader: HubRowReader, data_ref: str, config: str, splits: Sequence[str],
                    allow: Callable[[str], bool], limit: int | None, piece_rows: int) -> Any:
    footers: dict[str, ParquetFooter] = {}
    info, pieces = await plan_hub_pieces(reader, data_ref, config, splits=splits or None,
                                         allow=allow, limit=limit, footers=footers,
                                         piece_rows=piece_rows)
    return info, pieces, footers


def _open(rec: dict[str, Any], retry_skipped: tuple[str, ...]) -> bool:
    """A unit record a later build does again (a transient failure, or one retried)."""
    status = str(rec.get("status"))
    return status == "retryable" or (status == "unavailable"
                                     and redo(str(rec.get("reason")), retry_skipped))


def _digest(value: Any) -> str:
    return xxhash.xxh3_64_hexdigest(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
