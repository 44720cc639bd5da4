"""JSONL metadata shards: what ``dynogen collect`` writes and any run can read back.

A shard line is ``Unit.to_dict()``, or a skipped record
``{"skipped": true, "dataset", "config", "reason", "detail"}`` so that reading
shards back yields the same units *and* the same counted skips as the source
they were collected from. Shards appear whole or not at all: each is written
to ``.tmp`` and renamed when full.

>>> stats = collect(FolderSource("datasets/"), "shards/", shard_size=1000)  # doctest: +SKIP
>>> for item in JsonlSource("shards/"):  # doctest: +SKIP
...     ...
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import orjson

from dynogen.errors import RunDirError, SourceError
from dynogen.units import Skipped, SkipReason, Unit

__all__ = ["CollectStats", "JsonlSource", "ShardWriter", "collect", "SHARD_PREFIX"]

SHARD_PREFIX = "units"


class JsonlSource:
    """Units from a ``.jsonl`` file, a glob of them, or a folder of ``*.jsonl`` (sorted).

    A line that is not a unit becomes ``Skipped(dataset="<file>:<lineno>",
    reason="invalid_metadata")`` with the parse error as detail.
    """

    def __init__(self, path: str | Path) -> None:
        self.spec = str(path)
        self.files = _shard_files(self.spec)

    def describe(self) -> str:
        if len(self.files) == 1:
            return f"metadata shard {self.files[0]}"
        return f"{len(self.files)} metadata shards from {self.spec}"

    def __iter__(self) -> Iterator[Unit | Skipped]:
        for path in self.files:
            with path.open("rb") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if line.strip():
                        yield _parse_line(line, f"{path}:{lineno}")


def _shard_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        if not files:
            raise SourceError(f"metadata source {spec} holds no *.jsonl shards")
        return files
    if path.is_file():
        return [path]
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec)) if Path(p).is_file())
        if files:
            return files
    raise SourceError(
        f"metadata source {spec} not found: pass a .jsonl shard, a glob of them "
        "or a folder of *.jsonl"
    )


def _parse_line(line: bytes, where: str) -> Unit | Skipped:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        return Skipped(where, "", SkipReason.INVALID_METADATA, f"not JSON: {err}")
    problem = _check_record(data)
    if problem:
        return Skipped(where, "", SkipReason.INVALID_METADATA, problem)
    if data.get("skipped") is True:
        return Skipped(
            data["dataset"],
            str(data.get("config") or ""),
            data["reason"],
            str(data.get("detail") or ""),
        )
    return Unit.from_dict(data)


def _check_record(data: Any) -> str:
    """Why ``data`` is neither a unit nor a skipped record ("" if it is one)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    if not isinstance(data.get("dataset"), str) or not data["dataset"]:
        return "missing 'dataset' (a non-empty string)"
    if data.get("skipped") is True:
        return "" if isinstance(data.get("reason"), str) and data["reason"] else "missing 'reason'"
    for key in ("config", "description", "license", "data_ref", "origin"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"'{key}' must be a string"
    fields = data.get("fields")
    if not isinstance(fields, list):
        return "missing 'fields' (a list)"
    for i, f in enumerate(fields):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            return f"fields[{i}] needs a 'name' string"
        if f.get("type") is not None and not isinstance(f["type"], str):
            return f"fields[{i}].type must be a string"
        if not isinstance(f.get("labels", []), list):
            return f"fields[{i}].labels must be a list"
    for key in ("tags", "splits", "samples"):
        if data.get(key) is not None and not isinstance(data[key], list):
            return f"'{key}' must be a list"
    if any(not isinstance(row, dict) for row in data.get("samples") or ()):
        return "'samples' must hold JSON objects"
    return ""


@dataclass(slots=True)
class CollectStats:
    """What ``collect`` wrote: units, skipped records by reason, and the shard files."""

    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    shards: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.written + sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "skipped": dict(self.skipped),
            "shards": [p.name for p in self.shards],
        }


class ShardWriter:
    """Writes ``units-00000.jsonl``, ``units-00001.jsonl``… of ``shard_size`` records each.

    >>> with ShardWriter("shards/", shard_size=1000) as out:  # doctest: +SKIP
    ...     out.write(unit)
    """

    def __init__(
        self, out_dir: str | Path, shard_size: int = 1000, *, prefix: str = SHARD_PREFIX
    ) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        self.out_dir = Path(out_dir).expanduser()
        self.shard_size = shard_size
        self.prefix = prefix
        self.stats = CollectStats()
        self._fh: BinaryIO | None = None
        self._tmp: Path | None = None
        self._in_shard = 0

    def __enter__(self) -> ShardWriter:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise RunDirError(f"{self.out_dir} is a file; pass a folder for metadata shards")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.out_dir.glob(f"{self.prefix}-*.jsonl"))
        if old:
            raise RunDirError(
                f"{self.out_dir} already holds shards ({old[0].name}…); "
                "pass an empty folder or delete them first"
            )
        return self

    def write(self, item: Unit | Skipped) -> None:
        if self._fh is None:
            self._open()
        assert self._fh is not None
        if isinstance(item, Unit):
            self._fh.write(orjson.dumps(item.to_dict()) + b"\n")
            self.stats.written += 1
        else:
            self._fh.write(orjson.dumps(item.to_dict()) + b"\n")
            self.stats.skipped[item.reason] += 1
        self._in_shard += 1
        if self._in_shard >= self.shard_size:
            self._close_shard()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._close_shard()
        elif self._fh is not None:  # leave no half-written shard behind
            self._fh.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._fh = self._tmp = None

    def _open(self) -> None:
        final = self._final(len(self.stats.shards))
        self._tmp = final.with_name(final.name + ".tmp")
        self._fh = self._tmp.open("wb")
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._fh is None or self._tmp is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = self._final(len(self.stats.shards))
        os.replace(self._tmp, final)
        self.stats.shards.append(final)
        self._fh = self._tmp = None

    def _final(self, index: int) -> Path:
        return self.out_dir / f"{self.prefix}-{index:05d}.jsonl"


def collect(
    source: Iterable[Unit | Skipped], out_dir: str | Path, shard_size: int = 1000
) -> CollectStats:
    """Copy a source into shards (what ``dynogen collect`` runs); returns the counts."""
    with ShardWriter(out_dir, shard_size) as writer:
        for item in source:
            writer.write(item)
    snapshot = _snapshot(source)
    if snapshot is not None:  # what was read, and when: a later grow lists from there
        path = writer.out_dir / "source.json"
        path.with_suffix(".tmp").write_bytes(
            orjson.dumps({**snapshot, "collected": writer.stats.to_dict()},
                         option=orjson.OPT_INDENT_2))
        os.replace(path.with_suffix(".tmp"), path)
    return writer.stats


def _snapshot(source: Any) -> dict[str, Any] | None:
    """``source.snapshot()`` of the source or of one it wraps (e.g. a limited Hub listing)."""
    for _ in range(4):
        if callable(getattr(source, "snapshot", None)):
            data = source.snapshot()
            return data if isinstance(data, dict) else None
        source = getattr(source, "source", None)
        if source is None:
            return None
    return None
