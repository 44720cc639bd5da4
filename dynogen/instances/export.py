"""Exporting a run's ``instances.jsonl`` as Parquet or as a ``datasets`` folder.

Runs can hold millions of instances, so the JSONL is read in batches and
written through ``pyarrow.parquet.ParquetWriter``; memory stays at one batch.
The ``datasets`` format is built from that Parquet file (``Dataset.from_parquet``
memory-maps it) and written with ``save_to_disk``, so it reloads with
``datasets.load_from_disk(out)``.

The file is read twice, both times streaming: once to learn the columns (every
key seen, in first-seen order) and the type that fits each (string, boolean or
64-bit integer; anything else is written as JSON text), then to write. A key
missing from a record is null there. Output is written to a temporary name
first and moved into place, so a failed export leaves no half-written file.

>>> export_instances(Path("runs/latest/instances.jsonl"), Path("out.parquet"), "parquet")
1234
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from dynogen.errors import ConfigError, RunDirError

__all__ = ["BATCH_ROWS", "FORMATS", "INSTANCE_COLUMNS", "export_instances"]

FORMATS = ("parquet", "datasets")
BATCH_ROWS = 5000
# Columns of an empty export (``Instance.to_dict`` keys), so its schema is still useful.
INSTANCE_COLUMNS = (
    "instruction", "input", "output", "task_id", "dataset", "config", "split", "license",
)


def export_instances(
    instances_jsonl: Path,
    out: Path,
    fmt: Literal["parquet", "datasets"] = "parquet",
    *,
    overwrite: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Write ``instances_jsonl`` to ``out`` in ``fmt``; returns the number of rows."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    instances_jsonl, out = Path(instances_jsonl), Path(out)
    if not instances_jsonl.is_file():
        raise RunDirError(f"{instances_jsonl} does not exist: run `dynogen run` first")
    if out.exists() and not overwrite:
        raise RunDirError(f"{out} already exists: choose another path or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dynogen-export-", dir=out.parent) as tmp:
        parquet = Path(tmp) / "instances.parquet"
        n = _write_parquet(instances_jsonl, parquet, batch_rows)
        if fmt == "parquet":
            staged = parquet
        else:
            staged = Path(tmp) / "dataset"
            _write_datasets(parquet, staged, Path(tmp) / "cache")
        _replace(staged, out)
    return n


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


def _scan(src: Path) -> dict[str, str]:
    """Pass one: every column (in first-seen order) and the one type that holds all its values."""
    kinds: dict[str, set[str]] = {}
    for rec in _records(src):
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


def _write_parquet(src: Path, dest: Path, batch_rows: int) -> int:
    """Pass two: write in batches. A column missing from a record is null there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "bool": pa.bool_(), "int": pa.int64()}
    columns = _scan(src)
    schema = pa.schema([(c, types[k]) for c, k in columns.items()])
    batch: dict[str, list[Any]] = {c: [] for c in columns}
    n = 0
    with pq.ParquetWriter(dest, schema, compression="zstd") as writer:

        def flush() -> None:
            writer.write_table(pa.table(batch, schema=schema))
            for values in batch.values():
                values.clear()

        for rec in _records(src):
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
