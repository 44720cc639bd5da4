"""A local dataset's row files, cut into pieces that can be read apart and in parallel.

The single-process build streams a folder through ``datasets`` (``rows.open_rows``).
The sharded build (``dynogen.instances.sharded``) reads the same rows piece by
piece on many workers: ``list_row_files`` asks ``datasets`` for the same split
order, features and data files the stream would use, ``plan_pieces`` cuts them
(a Parquet file by row group, a JSON Lines or CSV file whole) and ``read_piece``
reads one piece as the stream would yield its rows:

- Parquet row groups are cast to the unit's ``datasets`` features (``table_cast``,
  as ``datasets`` casts), so ClassLabel ids and nested fields come out as they do;
- JSON Lines and CSV files go through ``datasets``' own builder for that one file,
  with the unit's features, so its parsing (pandas for CSV) is the same.

Each piece knows its place: ``(split_index, file_index, first_row + i)`` orders
its rows as the stream does, which is what lets a later phase keep the copy of
a duplicate that one process would have kept. ``--rows-per-split N`` is applied
here, in that order (a JSON or CSV file is counted up to what is still needed);
``None`` takes every row.

>>> files = list_row_files("data/my_set", "default", splits=None, allow=None)  # doctest: +SKIP
>>> pieces = plan_pieces(files, limit=None)
>>> rows = list(read_piece(files.ref, pieces[0]))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynogen.io.rows import (  # one classification for both
    RowsInfo,
    RowsReason,
    RowsUnavailable,
    _classify,
    _load_errors,
    _short,
    open_rows,
)

__all__ = ["Piece", "RowFiles", "SourceRef", "list_row_files", "plan_pieces", "read_piece"]

# Consecutive row groups of one Parquet file are read as one piece up to this many rows.
PIECE_ROWS = 200_000


@dataclass(frozen=True, slots=True)
class SourceRef:
    """What a worker needs to read a unit's pieces: the folder, config, format, features."""

    data_ref: str
    config: str | None
    format: str  # "parquet", "json", "csv", ... (the ``datasets`` builder's name)
    features: dict[str, Any] | None  # ``Features.to_dict()``; None: none declared
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"data_ref": self.data_ref, "config": self.config, "format": self.format,
                "features": self.features, "cache_dir": self.cache_dir}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SourceRef:
        return cls(str(d["data_ref"]), d.get("config"), str(d["format"]), d.get("features"),
                   d.get("cache_dir"))


@dataclass(frozen=True, slots=True)
class RowFiles:
    """A unit's splits (after the split policy), their data files in order, and the info."""

    ref: SourceRef
    info: RowsInfo
    files: dict[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Piece:
    """Rows ``first_row ..`` of one file (``row_groups`` of a Parquet file, else all of it),
    at most ``limit`` of them (``None``: all)."""

    split: str
    split_index: int
    file_index: int
    path: str
    row_groups: tuple[int, ...] = ()
    first_row: int = 0
    limit: int | None = None
    rows: int | None = None  # known before reading (Parquet footers), for planning

    @property
    def name(self) -> str:
        """A stable name for what this piece writes: split, file and first row group."""
        first = self.row_groups[0] if self.row_groups else 0
        return f"{self.split_index:02d}-{self.file_index:05d}-{first:05d}"

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "split_index": self.split_index,
                "file_index": self.file_index, "path": self.path,
                "row_groups": list(self.row_groups), "first_row": self.first_row,
                "limit": self.limit, "rows": self.rows}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Piece:
        return cls(str(d["split"]), int(d["split_index"]), int(d["file_index"]), str(d["path"]),
                   tuple(int(g) for g in d.get("row_groups") or ()), int(d.get("first_row") or 0),
                   d.get("limit"), d.get("rows"))


def _builder(data_ref: str, config: str | None, **kw: Any) -> Any:
    import datasets

    name = config or None
    try:
        return datasets.load_dataset_builder(data_ref, name=name, **kw)
    except ValueError as e:
        if name != "default" or "not found" not in str(e):
            raise
        return datasets.load_dataset_builder(data_ref, name=None, **kw)


def list_row_files(data_ref: str, config: str | None, *, splits: Sequence[str] | None,
                   allow: Callable[[str], bool] | None,
                   cache_dir: str | None = None) -> RowFiles:
    """The unit's splits, features and data files, as ``open_rows`` would stream them.

    Raises ``RowsUnavailable`` for what ``open_rows`` raises it for."""
    info = open_rows(data_ref, config, splits=splits, rows_per_split=0, cache_dir=cache_dir,
                     allow=allow).info
    extra = {"cache_dir": cache_dir} if cache_dir else {}
    try:
        builder = _builder(data_ref, config, **extra)
        data_files = builder.config.data_files or {}
        files = {s: tuple(str(p) for p in data_files.get(s, ())) for s in info.splits}
    except _load_errors() as e:
        raise RowsUnavailable(*_classify(e, data_ref, config)) from None
    feats = info.features
    ref = SourceRef(data_ref, config, str(builder.name),
                    feats.to_dict() if feats is not None and hasattr(feats, "to_dict") else None,
                    cache_dir)
    return RowFiles(ref, info, files)


def plan_pieces(files: RowFiles, limit: int | None, *,
                piece_rows: int = PIECE_ROWS) -> list[Piece]:
    """The pieces to read, in stream order, with ``limit`` rows per split applied."""
    pieces: list[Piece] = []
    for s_idx, split in enumerate(files.info.splits):
        remaining = limit
        for f_idx, path in enumerate(files.files.get(split, ())):
            if remaining == 0:
                break
            if files.ref.format == "parquet":
                got = _parquet_pieces(split, s_idx, f_idx, path, remaining, piece_rows,
                                      files.ref.data_ref)
            else:
                n = None if remaining is None else _count_rows(files.ref, split, path, remaining)
                got = [Piece(split, s_idx, f_idx, path, (), 0, remaining, n)]
            pieces.extend(got)
            if remaining is not None:
                remaining -= sum(min(p.rows or 0, p.limit if p.limit is not None else 1 << 62)
                                 for p in got)
    return pieces


def _parquet_pieces(split: str, s_idx: int, f_idx: int, path: str, remaining: int | None,
                    piece_rows: int, data_ref: str) -> list[Piece]:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except _load_errors() as e:
        raise RowsUnavailable(RowsReason.LOAD_ERROR,
                              f"{data_ref} [{split}] {path}: {type(e).__name__}: {_short(e)}"
                              ) from None
    pieces: list[Piece] = []
    groups: list[int] = []
    start = offset = rows = 0
    for g in range(meta.num_row_groups):
        if remaining is not None and offset >= remaining:
            break
        if not groups:
            start = offset
        groups.append(g)
        n = meta.row_group(g).num_rows
        rows += n
        offset += n
        if rows >= piece_rows:
            pieces.append(Piece(split, s_idx, f_idx, path, tuple(groups), start, None, rows))
            groups, rows = [], 0
    if groups:
        pieces.append(Piece(split, s_idx, f_idx, path, tuple(groups), start, None, rows))
    if remaining is not None:
        cut: list[Piece] = []
        left = remaining
        for p in pieces:
            if left <= 0:
                break
            take = min(p.rows or 0, left)
            cut.append(Piece(p.split, p.split_index, p.file_index, p.path, p.row_groups,
                             p.first_row, take if take < (p.rows or 0) else None, p.rows))
            left -= take
        pieces = cut
    return pieces


def _count_rows(ref: SourceRef, split: str, path: str, up_to: int) -> int:
    """Rows in one JSON or CSV file, counted only up to ``up_to`` (what the cap still needs)."""
    return sum(1 for _ in _stream(ref, split, path, up_to))


def _features(ref: SourceRef) -> Any:
    if ref.features is None:
        return None
    from datasets import Features

    return Features.from_dict(ref.features)


def read_piece(ref: SourceRef, piece: Piece) -> Iterator[dict[str, Any]]:
    """The piece's rows, in order, as ``datasets`` streams them. Raises ``RowsUnavailable``."""
    if ref.format == "parquet":
        yield from _parquet_rows(ref, piece)
    else:
        yield from _stream(ref, piece.split, piece.path, piece.limit)


def _parquet_rows(ref: SourceRef, piece: Piece) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq
    from datasets.table import table_cast

    features = _features(ref)
    left = piece.limit
    try:
        pf = pq.ParquetFile(piece.path)
        for g in piece.row_groups:
            if left is not None and left <= 0:
                return
            table = pf.read_row_group(g)
            if left is not None and table.num_rows > left:
                table = table.slice(0, left)
            if features is not None:
                table = table_cast(table, features.arrow_schema)
            rows = table.to_pylist()
            if left is not None:
                left -= len(rows)
            yield from rows
    except _load_errors() as e:
        raise RowsUnavailable(RowsReason.LOAD_ERROR,
                              f"{ref.data_ref} [{piece.split}] {piece.path}: "
                              f"{type(e).__name__}: {_short(e)}") from None


def _stream(ref: SourceRef, split: str, path: str, limit: int | None) -> Iterator[dict[str, Any]]:
    errors = _load_errors()
    extra: dict[str, Any] = {"cache_dir": ref.cache_dir} if ref.cache_dir else {}
    features = _features(ref)
    if features is not None:
        extra["features"] = features
    try:
        builder = _builder(ref.data_ref, ref.config, data_files={split: [path]}, **extra)
        stream = builder.as_streaming_dataset(split=split)
        for row in itertools.islice(stream, limit):
            yield dict(row)
    except errors as e:
        raise RowsUnavailable(RowsReason.LOAD_ERROR,
                              f"{ref.data_ref} [{split}] {path}: {type(e).__name__}: "
                              f"{_short(e)}") from None
