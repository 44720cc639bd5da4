"""Instances as Parquet shards laid out for the Hub, the same bytes for the same instances.

Layout, one folder per licence class so a user can load only what their use allows::

    data/permissive/train-00000.parquet
    data/permissive/heldout-00000.parquet
    data/share-alike/train-00000.parquet ...

The split is the task's (``task_split``: held-out tasks are their own split, so no
held-out task has rows in ``train``); the class is the strictest class of the
instance's ``license`` (``policy.licenses.strictest_class``). Instances keep the
order of ``instances.jsonl`` (or of the collection's merged view), and each shard
takes the next ``rows_per_shard`` of its class and split.

Deterministic bytes, so a publish of unchanged data changes no file and a resumed
one finds what it already sent: a fixed schema (``SHARD_COLUMNS`` as strings, then
``version`` for a collection, then any other key the instances hold, sorted),
row groups of exactly ``row_group_rows`` (the last one shorter), zstd at a fixed
level, no timestamps, no per-write metadata. The bytes do depend on pyarrow's
version (it names itself in the footer): a newer pyarrow re-uploads every shard once.

Memory: one open writer per class and split, each holding at most one row group.

>>> shards = write_shards(records, Path("staging"), rows_per_shard=100_000)  # doctest: +SKIP
>>> shards[0].path, shards[0].rows
('data/permissive/train-00000.parquet', 100000)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dynogen.errors import ConfigError
from dynogen.policy.licenses import strictest_class

__all__ = [
    "ROWS_PER_SHARD", "ROW_GROUP_ROWS", "SHARD_COLUMNS", "Shard", "shard_path", "task_split",
    "write_shards",
]

ROWS_PER_SHARD = 100_000
ROW_GROUP_ROWS = 10_000
SHARD_COLUMNS = (
    "instruction", "input", "output", "task_id", "dataset", "config", "split", "license",
    "license_class", "task_split",
)
_COMPRESSION_LEVEL = 3


@dataclass(frozen=True, slots=True)
class Shard:
    """One written file: its path in the repository, rows, size and content hash."""

    path: str
    license_class: str
    split: str
    rows: int
    size: int
    sha256: str


def task_split(rec: dict[str, Any]) -> str:
    """``train`` or ``heldout``: the split of the task the instance belongs to."""
    return "heldout" if rec.get("task_split") == "heldout" else "train"


def shard_path(license_class: str, split: str, index: int) -> str:
    return f"data/{license_class}/{split}-{index:05d}.parquet"


def _text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return orjson.dumps(v).decode()


class _Stream:
    """The shards of one class and split, written one row group at a time."""

    def __init__(self, root: Path, license_class: str, split: str, schema: Any,
                 rows_per_shard: int, row_group_rows: int) -> None:
        self.root, self.license_class, self.split = root, license_class, split
        self.schema, self.rows_per_shard, self.row_group_rows = (
            schema, rows_per_shard, row_group_rows)
        self.batch: dict[str, list[Any]] = {n: [] for n in schema.names}
        self.index = 0
        self.in_shard = 0
        self.writer: Any = None
        self.done: list[Shard] = []

    def add(self, row: dict[str, Any]) -> None:
        for name, values in self.batch.items():
            values.append(row.get(name))
        self.in_shard += 1
        if len(self.batch["instruction"]) == self.row_group_rows:
            self._flush()
        if self.in_shard == self.rows_per_shard:
            self.close()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            path = self.root / shard_path(self.license_class, self.split, self.index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(
                path, self.schema, compression="zstd", compression_level=_COMPRESSION_LEVEL,
                use_dictionary=True, write_statistics=True, version="2.6",
                data_page_version="1.0")
        self.writer.write_table(pa.table(self.batch, schema=self.schema))
        for values in self.batch.values():
            values.clear()

    def close(self) -> None:
        if self.batch["instruction"]:
            self._flush()
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        rel = shard_path(self.license_class, self.split, self.index)
        size, digest = file_digest(self.root / rel)
        self.done.append(Shard(rel, self.license_class, self.split, self.in_shard, size, digest))
        self.index += 1
        self.in_shard = 0


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def write_shards(
    records: Iterable[dict[str, Any]],
    root: Path,
    *,
    extra_columns: Sequence[str] = (),
    with_version: bool = False,
    rows_per_shard: int = ROWS_PER_SHARD,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> list[Shard]:
    """Write ``records`` under ``root/data/``; returns the shards in path order.

    ``extra_columns``: keys beyond ``SHARD_COLUMNS`` to keep (as text); ``with_version``:
    a collection's ``version`` column. Both are known before writing (the caller's
    first pass over the records), so every shard has the same schema.
    """
    import pyarrow as pa

    if rows_per_shard < 1 or row_group_rows < 1:
        raise ConfigError("rows per shard and per row group must be at least 1")
    row_group_rows = min(row_group_rows, rows_per_shard)
    fields = [(c, pa.string()) for c in SHARD_COLUMNS]
    if with_version:
        fields.append(("version", pa.int64()))
    extra = sorted(set(extra_columns) - set(SHARD_COLUMNS) - {"version"})
    fields += [(c, pa.string()) for c in extra]
    schema = pa.schema(fields)
    text_columns = [c for c in schema.names if c not in ("license_class", "task_split",
                                                         "version")]
    streams: dict[tuple[str, str], _Stream] = {}
    try:
        for rec in records:
            row: dict[str, Any] = {c: _text(rec.get(c)) for c in text_columns}
            raw = rec.get("license")
            row["license_class"] = strictest_class(raw if isinstance(raw, str) else None)
            row["task_split"] = task_split(rec)
            if with_version:
                v = rec.get("version")
                row["version"] = v if isinstance(v, int) and not isinstance(v, bool) else None
            key = (row["license_class"], row["task_split"])
            stream = streams.get(key)
            if stream is None:
                stream = streams[key] = _Stream(root, *key, schema, rows_per_shard,
                                                row_group_rows)
            stream.add(row)
    finally:
        for stream in streams.values():
            stream.close()
    return sorted((s for st in streams.values() for s in st.done), key=lambda s: s.path)
