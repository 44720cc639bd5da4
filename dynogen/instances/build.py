"""The instance stage: kept tasks × dataset rows → (instruction, input, output).

``InstanceBuilder`` takes units whose tasks are committed — those already in
``units.jsonl`` when it starts (a resume's backlog, or all of them for ``dynogen
build``), then each unit the task stage commits while it runs (``add``) — and
reads their rows through a ``RowReader`` up to ``window`` units at once: Hub
datasets concurrently under the Hub's rate-limit buckets, local folders one at
a time. It writes in commit order whatever the order reads finish in: each
unit's tasks applied to its rows, duplicate instances dropped by xxhash against
everything written before, the instances appended to ``instances.jsonl`` and
the unit journaled in ``builds.jsonl`` with the byte range it wrote and its
line count, data synced before journal (``store.journal.Commits``). So a build
that runs beside the task stage writes, byte for byte, what a build after it
writes, and a killed build resumes without duplicating or losing instances.

Rows come only from the splits the split policy allows (never a test split by
default); each instance records its row's ``split``. A task that lists its
allowed answers gets no instance whose output is not among them
(``output_not_in_labels``); a task whose output never varies is degenerate and
dropped. With ``max_share`` no source dataset keeps more than that share of the
run's tasks (``policy.share.share_caps``), which needs every task first: the
build then runs after the task stage, and the tasks over the cap build no
instances (``over_max_share``).

Rows that could not be read are journaled ``unavailable`` (a final reason:
not found, gated, no data files...) or ``retryable`` (the Hub busy or away
after the retries): a resume builds a retryable unit again, after the units
built before it, deduplicated against all of them; its instances then come
later in ``instances.jsonl`` than its place in the source would put them.

Stopping (``stop``, the first Ctrl-C or SIGTERM): no read starts, reads in
flight are dropped, the units whose rows are in are written in order, and the
rest waits for the resume.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dynogen.config import Config
from dynogen.dedup import HashSet
from dynogen.instances.apply import built_rows, instance_record, is_degenerate
from dynogen.instances.render import Instance, instance_hash
from dynogen.io.row_reader import RowReader
from dynogen.io.rows import RowsUnavailable, UnitRows, open_rows
from dynogen.policy.share import share_caps
from dynogen.policy.splits import SplitPolicy
from dynogen.progress import Bar, Plain, Quiet, make_progress
from dynogen.report import Stats
from dynogen.store.journal import Commits, JsonlWriter, iter_jsonl
from dynogen.store.rundir import RunDir
from dynogen.store.storage import storage_error
from dynogen.tasks.task import Task
from dynogen.units import redo

__all__ = ["BUILD_WINDOW", "InstanceBuilder", "abuild_instances", "build_instances",
           "committed_units",
           "instance_dict_hash"]

BUILD_WINDOW = 64  # units whose rows are read (or held, read) ahead of the next write
# ... as long as the rows held, read and not yet written, are fewer than this: with
# --rows-per-split all a unit can have millions, and 64 of them do not fit in memory
ROWS_AHEAD = 400_000


@dataclass(frozen=True, slots=True)
class _Todo:
    """One committed unit to build: its tasks' bytes in ``tasks.jsonl`` and where its rows are."""

    key: str
    dataset: str
    config: str
    tasks_start: int
    tasks_end: int
    data_ref: str | None
    splits: tuple[str, ...]
    keep: int | None = None  # under max_share: the first ``keep`` tasks build
    capped: int = 0  # ... and these do not


def _todo(rec: dict[str, Any], start: int) -> _Todo:
    return _Todo(str(rec.get("key")), str(rec.get("dataset") or ""), str(rec.get("config") or ""),
                 int(rec.get("tasks_start", start)), int(rec["tasks_end"]),
                 rec.get("data_ref") or None, tuple(rec.get("splits") or ()))


class InstanceBuilder:
    """The instance stage of one run directory (see the module docstring).

    >>> builder = InstanceBuilder(cfg, rundir, reader=reader, stats=stats)
    >>> builder.add_committed()          # what units.jsonl holds already
    >>> running = asyncio.create_task(builder.run())
    >>> builder.add(rec)                 # each unit the task stage commits
    >>> builder.close_input(); await running; builder.close()
    """

    def __init__(self, cfg: Config, rundir: RunDir, *, reader: RowReader,
                 stats: Stats | None = None, seen: HashSet | None = None,
                 window: int = BUILD_WINDOW, progress: Bar | Plain | Quiet | None = None,
                 rows_ahead: int = ROWS_AHEAD) -> None:
        self.cfg = cfg
        self.rundir = rundir
        self.reader = reader
        self.stats = stats or Stats(retry_skipped=cfg.retry_skipped)
        self.window = max(1, window)
        self.rows_ahead = rows_ahead
        self._reads = self._rows = 0  # units read and written this session, and their rows
        self.progress = progress or Quiet()
        self.policy = SplitPolicy.parse(cfg.splits)
        self.cache_dir = str(rundir.path / ".hf-cache")
        self.built = 0
        rundir.take_build("local")  # a sharded build's output is replaced, not mixed
        self._done: set[str] = set()
        for rec in iter_jsonl(rundir.builds):
            self.stats.add_build(rec)
            key = str(rec.get("key"))
            if _settled(rec, cfg.retry_skipped):
                self._done.add(key)
            else:
                self._done.discard(key)  # a later retryable line reopens an older one
        self.seen = seen if seen is not None else HashSet()
        for rec in iter_jsonl(rundir.instances):
            self.seen.add(_dict_hash(rec))
        self._queued: set[str] = set()
        self._input: deque[_Todo] = deque()
        self._more = asyncio.Event()
        self._closed = False
        self._stopping = False
        self._out = JsonlWriter(rundir.instances)
        self._journal = JsonlWriter(rundir.builds)
        self._commits = Commits(self._journal, data=[self._out], durability=cfg.durability)
        self._tasks_fd = os.open(rundir.tasks, os.O_RDONLY | os.O_CREAT, 0o644)

    # ------------------------------------------------------------------ input
    def add_committed(self, *, caps: bool = False) -> int:
        """Queue every unit ``units.jsonl`` holds with tasks and no final build; ``caps``:
        apply ``max_share`` (all tasks are committed by now). Returns how many were queued."""
        before = len(self._input)
        for todo in committed_units(self.cfg, self.rundir, caps=caps):
            self._queue(todo)
        return len(self._input) - before

    def add(self, rec: dict[str, Any]) -> None:
        """Queue a unit the task stage has just committed (its ``units.jsonl`` record)."""
        if rec.get("tasks_kept") and isinstance(rec.get("tasks_end"), int):
            self._queue(_todo(rec, int(rec["tasks_end"])))

    def _queue(self, todo: _Todo) -> None:
        if todo.key in self._done or todo.key in self._queued:
            return
        self._queued.add(todo.key)
        self._input.append(todo)
        self._more.set()

    def close_input(self) -> None:
        """No more units will be added: ``run`` ends once the queue is built."""
        self._closed = True
        self._more.set()

    def stop(self) -> None:
        """Start no read; write the units whose rows are in, in order; leave the rest."""
        self._stopping = True
        self._more.set()

    @property
    def pending(self) -> int:
        return len(self._input)

    # -------------------------------------------------------------------- run
    async def run(self) -> None:
        """Build what is queued and what comes, until ``close_input`` (or ``stop``).

        A full or failing disk (``StorageError``) ends it and is raised."""
        pending: deque[tuple[_Todo, asyncio.Task[UnitRows | RowsUnavailable | None]]] = deque()
        try:
            while True:
                while (len(pending) < self.window and self._input and not self._stopping
                       and self._may_read(pending)):
                    todo = self._input.popleft()
                    pending.append((todo, asyncio.create_task(self._read(todo))))
                if pending and pending[0][1].done():
                    todo, task = pending.popleft()
                    self._write(todo, task.result())
                    await asyncio.sleep(0)  # let the task stage and the reads run between writes
                    continue
                if self._stopping or (not pending and self._closed and not self._input):
                    return
                self._more.clear()
                waiter = asyncio.ensure_future(self._more.wait())
                heads = {waiter} | ({pending[0][1]} if pending else set())
                try:
                    await asyncio.wait(heads, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(t for _, t in pending), return_exceptions=True)
            self._commits.sync()

    def _may_read(self, pending: deque[tuple[_Todo, asyncio.Task[Any]]]) -> bool:
        """Whether one more read may start: always when none is pending; else while the
        rows held (read, not yet written) and expected (reads in flight, at the mean size of
        the units read so far) stay under ``rows_ahead``. Before any unit's size is known,
        one read at a time: its size tells how far ahead the next ones may go."""
        if not pending:
            return True
        sizes = [len(r) for _, t in pending if t.done() and not t.cancelled()
                 and t.exception() is None and isinstance(r := t.result(), UnitRows)]
        reads = self._reads + len(sizes)
        if reads == 0:
            return False
        mean = (self._rows + sum(sizes)) / reads
        in_flight = sum(1 for _, t in pending if not t.done())
        return sum(sizes) + in_flight * mean + mean <= self.rows_ahead

    def close(self) -> None:
        """Sync and close the journals (after ``run``)."""
        try:
            self._commits.close()
        finally:
            self.progress.close()
            if self._tasks_fd >= 0:
                os.close(self._tasks_fd)
                self._tasks_fd = -1

    # ------------------------------------------------------------- one unit
    def _tasks(self, todo: _Todo) -> list[Task]:
        size = todo.tasks_end - todo.tasks_start
        data = os.pread(self._tasks_fd, size, todo.tasks_start) if size > 0 else b""
        return [Task.from_dict(orjson.loads(line)) for line in data.splitlines() if line]

    async def _read(self, todo: _Todo) -> UnitRows | RowsUnavailable | None:
        """The unit's rows, the reason there are none, or ``None`` (nothing to read)."""
        if not todo.data_ref or todo.keep == 0:
            return None
        config = todo.config or self._tasks(todo)[0].config
        try:
            return await self.reader.read(todo.data_ref, config, splits=todo.splits or None,
                                          rows_per_split=self.cfg.rows_to_read,
                                          allow=self.policy.allows)
        except RowsUnavailable as e:
            return e

    def _write(self, todo: _Todo, got: UnitRows | RowsUnavailable | None) -> None:
        tasks = self._tasks(todo)
        if todo.keep is not None:
            tasks = tasks[:todo.keep]
        start = self._out.tell()
        rec: dict[str, Any] = {"key": todo.key, "tasks": len(tasks)}
        if not tasks:
            rec.update(status="capped", tasks_over_max_share=todo.capped)
        elif not todo.data_ref:
            rec.update(status="no_rows", reason="no_data_ref")
        elif isinstance(got, RowsUnavailable):
            _raise_if_disk(got.detail, self.cache_dir)  # a full disk is not the dataset's fault
            rec.update(status="retryable" if got.retryable else "unavailable", reason=got.reason,
                       detail=got.detail[:300])
        elif got is not None:
            self._reads += 1
            self._rows += len(got)
            rec.update(self._instances(tasks, got))
        rec["instances_start"] = start
        if todo.capped and tasks:
            rec["tasks_over_max_share"] = todo.capped
        rec["instances_end"] = self._out.tell()
        self._journal.write(rec)
        self._commits.commit()  # StorageError (disk full) ends the build; resume redoes the rest
        self.stats.add_build(rec)
        self.built += 1
        self.progress.unit_done()

    def _instances(self, tasks: list[Task], rows: UnitRows) -> dict[str, Any]:
        labels = dict(rows.info.labels)
        listed = list(rows)
        skipped: Counter[str] = Counter()
        written = dup = truncated = 0
        for task in tasks:
            for d in _apply(task, listed, labels, skipped):
                if self.seen.add(_dict_hash(d)):
                    self._out.write(d)
                    written += 1
                    truncated += bool(d.get("input_truncated"))
                else:
                    dup += 1
        rec: dict[str, Any] = {"status": "built", "rows": len(listed), "instances": written,
                               "duplicates": dup}
        if truncated:
            rec["truncated_around_answer"] = truncated
        if rows.dropped:
            skipped["truncated_cell"] += rows.dropped
        if skipped:
            rec["skipped"] = dict(skipped)
        return rec


def committed_units(cfg: Config, rundir: RunDir, *, caps: bool = True,
                    ) -> list[_Todo]:
    """The units ``units.jsonl`` holds with tasks, in commit order; with ``caps`` and
    ``max_share``, each says how many of its tasks build (the rest are over the share).
    The one place caps are applied: they need every task, so a build with ``max_share``
    runs after the task stage and takes its units from here, never from ``add``."""
    limits: dict[str, int] | None = None
    if caps and cfg.max_share is not None and cfg.max_share < 1.0:
        counts: Counter[str] = Counter(str(r.get("dataset")) for r in iter_jsonl(rundir.tasks))
        limits = share_caps(counts, cfg.max_share)
    taken: Counter[str] = Counter()
    todos: list[_Todo] = []
    end = 0
    fd = os.open(rundir.tasks, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        for rec in iter_jsonl(rundir.units):
            if not (rec.get("tasks_kept") and isinstance(rec.get("tasks_end"), int)):
                continue
            todo = _todo(rec, end)
            end = todo.tasks_end
            if limits is not None:
                size = todo.tasks_end - todo.tasks_start
                n = os.pread(fd, size, todo.tasks_start).count(b"\n") if size > 0 else 0
                keep = max(0, min(n, limits.get(todo.dataset, 0) - taken[todo.dataset]))
                taken[todo.dataset] += n
                todo = dataclasses.replace(todo, keep=keep, capped=n - keep)
            todos.append(todo)
    finally:
        os.close(fd)
    return todos


def _settled(rec: dict[str, Any], retry_skipped: tuple[str, ...]) -> bool:
    """Whether a ``builds.jsonl`` record is final (a resume does not build the unit again)."""
    status = str(rec.get("status"))
    if status == "retryable":
        return False
    return not (status == "unavailable" and redo(str(rec.get("reason")), retry_skipped))


def _apply(task: Task, rows: list[tuple[str, dict[str, Any]]],
           labels: dict[str, tuple[str, ...]],
           skipped: Counter[str]) -> Iterator[dict[str, Any]]:
    """The task's records, made one at a time as they are written (a unit's rows can be
    millions: one list of records beside the rendered instances doubled the peak)."""
    built = built_rows(task, rows, labels, skipped)
    if built and is_degenerate(task, len(built), len({i.output for _, i in built})):
        skipped["degenerate_constant_output"] += len(built)
        return iter(())
    return (instance_record(task, split, inst) for split, inst in built)


async def abuild_instances(cfg: Config, rundir: RunDir, *, reader: RowReader,
                           stats: Stats | None = None, seen: HashSet | None = None,
                           on_builder: Callable[[InstanceBuilder], None] | None = None,
                           window: int = BUILD_WINDOW) -> InstanceBuilder:
    """Build every committed unit not yet built (the task stage is over), concurrently.

    ``on_builder`` is handed the builder before it runs (to wire ``stop`` to signals);
    ``window``: units read ahead (1 reads one unit at a time).
    """
    builder = InstanceBuilder(cfg, rundir, reader=reader, stats=stats, seen=seen, window=window)
    try:
        builder.add_committed(caps=True)
        builder.progress = make_progress(cfg.quiet, "instances", total=builder.pending)
        builder.close_input()
        if on_builder is not None:
            on_builder(builder)
        await builder.run()
    finally:
        builder.close()
    return builder


def build_instances(cfg: Config, rundir: RunDir, *, stats: Stats | None = None,
                    opener: Callable[..., Any] = open_rows, seen: HashSet | None = None,
                    reader: RowReader | None = None) -> Stats:
    """Synchronous ``abuild_instances``; ``opener`` reads local folders (injectable), and
    ``reader`` (else one with only ``opener``) reads every unit's rows.

    ``seen`` holds instance hashes already taken elsewhere (a collection's earlier
    versions), so those instances count as duplicates here too.
    """
    stats = stats or Stats(retry_skipped=cfg.retry_skipped)

    async def main() -> None:
        own = reader or RowReader(cache_dir=str(rundir.path / ".hf-cache"), opener=opener)
        try:
            await abuild_instances(cfg, rundir, reader=own, stats=stats, seen=seen)
        finally:
            if reader is None:
                await own.aclose()

    asyncio.run(main())
    return stats


def instance_dict_hash(d: dict[str, Any]) -> int:
    """The dedup hash of an ``instances.jsonl`` record (instruction, input, output)."""
    return _dict_hash(d)


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _raise_if_disk(detail: str, cache_dir: str) -> None:
    """Rows that could not be read because the run's own disk is full (the ``datasets``
    cache lives in the run directory) stop the build to be resumed, rather than being
    journaled as an unavailable dataset for good."""
    for code in _DISK_ERRNOS:
        if f"[Errno {code}]" in detail or os.strerror(code) in detail:
            raise storage_error(OSError(code, os.strerror(code)), Path(cache_dir))


def _dict_hash(d: dict[str, Any]) -> int:
    return instance_hash(Instance(str(d.get("instruction", "")), str(d.get("input", "")),
                                  str(d.get("output", "")), "", "", "", ""))
