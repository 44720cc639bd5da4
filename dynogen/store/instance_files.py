"""A run's instances, wherever a build put them: ``instances.jsonl`` or ``instances/``.

The single-process build appends ``instances.jsonl`` in commit order. The
sharded build (``dynogen build --engine ray``, ``dynogen.instances.sharded``)
writes ``instances/part-NNNNN.parquet``, one file per hash partition, each
written whole and renamed into place. A run holds one or the other: a build
with the other engine starts over (``RunDir`` clears what it replaces).

Every reader of a run's instances (export, publish, inspect, a collection's
dedup seed) goes through ``iter_instances``, which gives the same dicts from
either: the shards' columns are the ``instances.jsonl`` keys, and a column the
line would not have (``input_truncated`` unless true) is left out again.

>>> for rec in iter_instances(Path("runs/demo")): ...      # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynogen.store.journal import iter_jsonl

__all__ = ["INSTANCE_COLUMNS", "SHARD_DIR", "count_instances", "has_instances",
           "instance_schema", "iter_instances", "shard_files", "write_instance_shard"]

SHARD_DIR = "instances"
# The keys of an ``instances.jsonl`` line, in its order (``input_truncated`` only when true).
INSTANCE_COLUMNS = ("instruction", "input", "output", "task_id", "dataset", "config", "split",
                    "license", "task_split")
_ROW_GROUP = 50_000


def instance_schema() -> Any:
    import pyarrow as pa

    return pa.schema([*((c, pa.string()) for c in INSTANCE_COLUMNS),
                      ("input_truncated", pa.bool_())])


def shard_files(run: Path) -> list[Path]:
    """The run's finished instance shards, in name order (none: an empty list)."""
    folder = run / SHARD_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("part-*.parquet") if p.is_file())


def has_instances(run: Path) -> bool:
    """Whether a build has written any instances file (it may hold no instance)."""
    return (run / "instances.jsonl").is_file() or bool(shard_files(run))


def iter_instances(run: Path) -> Iterator[dict[str, Any]]:
    """Every instance of the run: ``instances.jsonl``'s lines, then the shards' rows."""
    yield from iter_jsonl(run / "instances.jsonl")
    for path in shard_files(run):
        yield from read_shard(path)


def read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """The instance dicts of one shard, as ``instances.jsonl`` would hold them."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    for batch in f.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            truncated = row.pop("input_truncated", None)
            rec = {c: row.get(c) for c in INSTANCE_COLUMNS}
            if truncated:
                rec["input_truncated"] = True
            yield rec


def count_instances(run: Path) -> int:
    """How many instances the run holds (shards: from their footers, without reading rows)."""
    import pyarrow.parquet as pq

    n = sum(1 for _ in iter_jsonl(run / "instances.jsonl"))
    return n + sum(int(pq.ParquetFile(p).metadata.num_rows) for p in shard_files(run))


def write_instance_shard(path: Path, table: Any, metadata: dict[bytes, bytes] | None = None,
                         ) -> None:
    """Write one shard whole (``table``: ``INSTANCE_COLUMNS`` and ``input_truncated``, or
    ``None`` for none), then rename it into place: a shard exists complete or not at all."""
    import pyarrow.parquet as pq

    schema = instance_schema()
    if table is None:
        table = schema.empty_table()
    table = table.cast(schema).replace_schema_metadata(metadata or None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=_ROW_GROUP)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
