"""Phase 1 of the sharded build: one piece of a unit's rows → a candidate file.

A worker reads one piece (``io.row_files``: a Parquet row group range, a JSON
Lines or CSV file, or a Hub unit read whole through the ``RowReader``), applies
the unit's tasks to its rows (``instances.apply``, as one process does) and
writes every instance it renders as a candidate: the instance's columns, its
dedup hash, and its order key ``(task, row)`` — with the unit, split and file
in the file's metadata, the key orders candidates as the single-process build
meets them. Candidates are grouped into one row group run per hash partition,
so phase 2 (``instances.merge``) reads only its partition of each file.

Beside them the file's metadata carries what the build counts: rows read, the
skip reasons, and per task how many rows it rendered and up to two distinct
outputs' hashes (whether a task is degenerate is decided over all pieces).
Within a piece, a later copy of an earlier candidate of the same task can never
be the one kept, so it is counted as a duplicate and not written.

The file is written whole and renamed into place, named for the unit and the
piece: a killed build, run again, reads the files it finds and redoes the rest.
A piece that cannot be read for good writes a file saying so (the unit is then
unavailable, as in one process); one that failed for a transient reason writes
nothing and is read again next time.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import xxhash

from dynogen.instances.apply import instance_record, render_rows
from dynogen.instances.render import Instance, instance_hash
from dynogen.io.row_files import Piece, SourceRef, read_piece
from dynogen.io.rows import RowsUnavailable, UnitRows
from dynogen.store.instance_files import INSTANCE_COLUMNS
from dynogen.tasks.task import Task

__all__ = ["META_KEY", "build_candidates", "candidate_meta", "load_tasks"]

META_KEY = b"dynogen"


def load_tasks(tasks_path: str, start: int, end: int, keep: int | None) -> list[Task]:
    """The unit's tasks: ``tasks.jsonl`` bytes ``[start, end)``, the first ``keep`` of them."""
    with open(tasks_path, "rb") as f:
        f.seek(start)
        data = f.read(max(0, end - start))
    tasks = [Task.from_dict(orjson.loads(line)) for line in data.splitlines() if line]
    return tasks if keep is None else tasks[:keep]


def candidate_meta(path: Path) -> dict[str, Any]:
    """What a written candidate file says of itself (its counts and partitions)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return dict(orjson.loads(meta[META_KEY]))


def _piece_rows(spec: Mapping[str, Any]) -> tuple[list[tuple[int, str, int, dict[str, Any]]],
                                                   dict[str, tuple[str, ...]] | None, int]:
    """``(split_index, split, row_index, row)`` of the piece in stream order, the labels
    when the rows brought them (a Hub unit), and rows the server cut a cell of."""
    if spec.get("hub_piece") is not None:
        return _hub_piece_rows(spec), None, 0
    piece = spec.get("piece")
    if piece is not None:
        p = Piece.from_dict(piece)
        ref = SourceRef.from_dict(spec["source"])
        return ([(p.split_index, p.split, p.first_row + i, row)
                 for i, row in enumerate(read_piece(ref, p))], None, 0)
    # a unit read whole through the RowReader (the Hub's viewer pages or Parquet files)
    import asyncio

    from dynogen.io.hub_rows import HubRowReader, environment_token
    from dynogen.io.row_reader import RowReader
    from dynogen.policy.splits import SplitPolicy

    unit = spec["unit_rows"]
    allow = SplitPolicy.parse(str(unit["split_policy"])).allows

    async def read() -> UnitRows:
        hub = HubRowReader.open(rpm=unit.get("hub_rpm"), concurrency=int(unit["hub_concurrency"]),
                                token=environment_token(), viewer_url=unit.get("viewer_url"))
        async with RowReader(hub, cache_dir=unit.get("cache_dir")) as reader:
            return await reader.read(unit["data_ref"], unit.get("config"),
                                     splits=unit.get("splits") or None,
                                     rows_per_split=int(unit["rows_per_split"]), allow=allow)

    got = asyncio.run(read())
    order = {s: i for i, s in enumerate(got.info.splits)}
    seen: Counter[str] = Counter()
    rows = []
    for split, row in got:
        rows.append((order.get(split, 0), split, seen[split], row))
        seen[split] += 1
    return rows, dict(got.info.labels), got.dropped


def _hub_piece_rows(spec: Mapping[str, Any]) -> list[tuple[int, str, int, dict[str, Any]]]:
    """One row-group piece of a Hub dataset's Parquet conversion (``io.hub_pieces``), read
    under Hub buckets of this worker's own, with this worker's own token."""
    import asyncio

    from dynogen.io.hub_parquet import ParquetFooter
    from dynogen.io.hub_pieces import read_hub_piece
    from dynogen.io.hub_rows import HubRowReader, environment_token

    p = Piece.from_dict(spec["hub_piece"])
    hub = spec["hub"]
    footer = ParquetFooter.from_dict(spec["footer"]) if spec.get("footer") else None

    async def read() -> list[dict[str, Any]]:
        reader = HubRowReader.open(rpm=hub.get("hub_rpm"),
                                   concurrency=int(hub["hub_concurrency"]),
                                   token=environment_token(), viewer_url=hub.get("viewer_url"))
        try:
            return await read_hub_piece(reader, p, footer=footer)
        finally:
            await reader.aclose()

    return [(p.split_index, p.split, p.first_row + i, row)
            for i, row in enumerate(asyncio.run(read()))]


def build_candidates(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Phase 1 for one piece (``spec``: see ``sharded.Plan``); returns the file's metadata.

    Runs on a worker: everything it needs is in ``spec`` or on the shared filesystem."""
    out = Path(spec["out"])
    if out.exists():
        return candidate_meta(out)
    tasks = load_tasks(spec["tasks"], int(spec["tasks_start"]), int(spec["tasks_end"]),
                       spec.get("keep"))
    labels = {k: tuple(v) for k, v in (spec.get("labels") or {}).items()}
    parts = int(spec["parts"])
    meta: dict[str, Any] = {"out": str(out), "unit": int(spec["unit"]),
                            "file": int(spec.get("file_index", 0)),
                            "rows": 0, "skipped": {}, "built": [0] * len(tasks),
                            "outputs": [[] for _ in tasks],
                            "local_duplicates": [0] * len(tasks),
                            "truncated_cell": 0, "parts": {}}
    try:
        rows, brought, meta["truncated_cell"] = _piece_rows(spec)
    except RowsUnavailable as e:
        meta.update(error=e.reason, detail=e.detail[:300], retryable=e.retryable)
        if not e.retryable:
            _write(out, {}, meta, parts)
        return meta
    meta["rows"] = len(rows)
    if brought is not None:
        labels = brought
    skipped: Counter[str] = Counter()
    cols: dict[str, list[Any]] = {c: [] for c in (*INSTANCE_COLUMNS, "input_truncated", "h",
                                                  "t", "s", "r")}
    pairs = [(split, row) for _, split, _, row in rows]
    for t, task in enumerate(tasks):
        built = 0
        outputs: list[str] = meta["outputs"][t]
        mine: set[int] = set()
        kept: list[tuple[int, str, Instance, int]] = []
        for i, split, inst in render_rows(task, pairs, labels, skipped):
            built += 1
            if len(outputs) < 2:
                oh = format(hash_text(inst.output), "x")
                if oh not in outputs:
                    outputs.append(oh)
            h = instance_hash(inst)
            if h in mine:  # a later copy within the piece is never the one kept
                meta["local_duplicates"][t] += 1
                continue
            mine.add(h)
            kept.append((i, split, inst, h))
        meta["built"][t] = built
        if kept:
            _columns(cols, task, t, kept, rows)
    meta["skipped"] = dict(skipped)
    _write(out, cols, meta, parts)
    return meta


def _columns(cols: dict[str, list[Any]], task: Task, t: int,
             kept: list[tuple[int, str, Instance, int]],
             rows: list[tuple[int, str, int, dict[str, Any]]]) -> None:
    """Append one task's kept candidates column by column (the hot loop of phase 1): each
    record as ``instance_record`` makes it, without making the dict."""
    first = instance_record(task, kept[0][1], kept[0][2])
    constant = {c: first.get(c) for c in ("task_id", "dataset", "config", "license",
                                          "task_split")}
    for c, v in constant.items():
        cols[c] += [v] * len(kept)
    cols["instruction"] += [k[2].instruction for k in kept]
    cols["input"] += [k[2].input for k in kept]
    cols["output"] += [k[2].output for k in kept]
    cols["split"] += [k[1] for k in kept]
    cols["input_truncated"] += [True if k[2].truncated else None for k in kept]
    cols["h"] += [k[3] for k in kept]
    cols["t"] += [t] * len(kept)
    cols["s"] += [rows[k[0]][0] for k in kept]
    cols["r"] += [rows[k[0]][2] for k in kept]


def hash_text(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


def _write(out: Path, cols: Mapping[str, list[Any]], meta: dict[str, Any], parts: int) -> None:
    """The candidates, one row group per hash partition present, and ``meta``; atomically."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([*((c, pa.string()) for c in INSTANCE_COLUMNS),
                        ("input_truncated", pa.bool_()), ("h", pa.uint64()), ("t", pa.int16()),
                        ("s", pa.int16()), ("r", pa.int64())])
    table = pa.table({name: cols.get(name, []) for name in schema.names}, schema=schema)
    chunks: list[tuple[int, Any]] = []
    if table.num_rows:
        h = np.asarray(cols["h"], dtype=np.uint64)
        part = (h % np.uint64(max(1, parts))).astype(np.int64)
        idx = np.argsort(part, kind="stable")  # within a partition, the piece's order
        bounds = np.flatnonzero(np.diff(part[idx])) + 1
        chunks = [(int(part[c[0]]), c) for c in np.split(idx, bounds)]
    meta["parts"] = {str(p): g for g, (p, _) in enumerate(chunks)}
    schema = schema.with_metadata({META_KEY: orjson.dumps(meta)})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for _, chunk in chunks:
                w.write_table(table.take(pa.array(chunk)).replace_schema_metadata(
                    schema.metadata), row_group_size=1 << 30)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
