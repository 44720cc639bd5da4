"""Exporting a run's instances as Parquet or as a ``datasets`` folder.

The instances come from a run directory (its ``instances.jsonl``, or the
``instances/part-*.parquet`` of a sharded build, both read through
``store.instance_files.iter_instances``), from a JSONL file of instance records
(a collection's merged view), or from a function that gives the records.

Runs can hold millions of instances, so the records are read in batches and
written through ``pyarrow.parquet.ParquetWriter``; memory stays at one batch.
The ``datasets`` format is built from that Parquet file (``Dataset.from_parquet``
memory-maps it) and written with ``save_to_disk``, so it reloads with
``datasets.load_from_disk(out)``.

The records are read twice, both times streaming: once to learn the columns
(every key seen, in first-seen order) and the type that fits each (string,
boolean or 64-bit integer; anything else is written as JSON text), then to
write. A key missing from a record is null there. Output is written to a
temporary name first and moved into place, so a failed export leaves no
half-written file.

>>> export_instances(Path("runs/latest"), Path("out.parquet"), "parquet")
1234
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from dynogen.errors import ConfigError, RunDirError
from dynogen.store.instance_files import has_instances, iter_instances

__all__ = ["BATCH_ROWS", "FORMATS", "INSTANCE_COLUMNS", "Records", "export_instances"]

# Gives the instance records afresh each time it is called (the export reads them twice).
Records = Callable[[], Iterable[dict[str, Any]]]

FORMATS = ("parquet", "datasets")
BATCH_ROWS = 5000
# Columns of an empty export (``Instance.to_dict`` keys), so its schema is still useful.
INSTANCE_COLUMNS = (
    "instruction", "input", "output", "task_id", "dataset", "config", "split", "license",
)


def export_instances(
    source: Path | Records,
    out: Path,
    fmt: Literal["parquet", "datasets"] = "parquet",
    *,
    overwrite: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Write ``source``'s instances to ``out`` in ``fmt``; returns the number of rows.

    ``source``: a run directory (either engine's instances), a JSONL file of
    instance records, or a function giving the records (called once per pass).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    records = _source(source)
    if out.exists() and not overwrite:
        raise RunDirError(f"{out} already exists: choose another path or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dynogen-export-", dir=out.parent) as tmp:
        parquet = Path(tmp) / "instances.parquet"
        n = _write_parquet(records, parquet, batch_rows)
        if fmt == "parquet":
            staged = parquet
        else:
            staged = Path(tmp) / "dataset"
            _write_datasets(parquet, staged, Path(tmp) / "cache")
        _replace(staged, out)
    return n


def _source(source: Path | Records) -> Records:
    if callable(source):
        return source
    path = Path(source)
    if path.is_dir():
        if not has_instances(path):
            raise RunDirError(f"{path} has no instances (no instances.jsonl or instances/): "
                              "run `dynogen run` or `dynogen build` first")
        return lambda: iter_instances(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist: run `dynogen run` first")
    return lambda: _records(path)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise RunDirError(f"{path}:{lineno} is not valid JSON ({e}); the file is damaged") \
                    from None
            if not isinstance(rec, dict):
                raise RunDirError(f"{path}:{lineno} is not a JSON object; the file is damaged")
            yield rec


_INT64 = (-(2**63), 2**63 - 1)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int) and _INT64[0] <= v <= _INT64[1]:
        return "int"
    if isinstance(v, str):
        return "str"
    return "json"


def _scan(records: Records) -> dict[str, str]:
    """Pass one: every column (in first-seen order) and the one type that holds all its values."""
    kinds: dict[str, set[str]] = {}
    for rec in records():
        for k, v in rec.items():
            seen = kinds.setdefault(k, set())
            if v is not None:
                seen.add(_kind(v))
    if not kinds:
        return {c: "str" for c in INSTANCE_COLUMNS}
    return {k: next(iter(ks)) if len(ks) == 1 and ks != {"json"} else "str"
            for k, ks in kinds.items()}


def _cell(v: Any, kind: str) -> Any:
    if v is None or kind != "str" or isinstance(v, str):
        return v
    return orjson.dumps(v).decode()


def _write_parquet(records: Records, dest: Path, batch_rows: int) -> int:
    """Pass two: write in batches. A column missing from a record is null there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "bool": pa.bool_(), "int": pa.int64()}
    columns = _scan(records)
    schema = pa.schema([(c, types[k]) for c, k in columns.items()])
    batch: dict[str, list[Any]] = {c: [] for c in columns}
    n = 0
    with pq.ParquetWriter(dest, schema, compression="zstd") as writer:

        def flush() -> None:
            writer.write_table(pa.table(batch, schema=schema))
            for values in batch.values():
                values.clear()

        for rec in records():
            for c, kind in columns.items():
                batch[c].append(_cell(rec.get(c), kind))
            n += 1
            if n % batch_rows == 0:
                flush()
        if n % batch_rows or n == 0:
            flush()
    return n


def _write_datasets(parquet: Path, dest: Path, cache: Path) -> None:
    import datasets

    # A private cache: from_parquet would otherwise copy the data into ~/.cache.
    ds = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(cache))
    assert isinstance(ds, datasets.Dataset)
    ds.save_to_disk(str(dest))


def _replace(staged: Path, out: Path) -> None:
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    os.replace(staged, out)
