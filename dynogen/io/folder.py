"""Dataset folders on disk: README.md and/or dataset_infos.json, maybe data files.

``root`` may be one dataset folder, a folder of them, or ``org/name`` folders
nested up to ``max_depth``. A folder is a dataset folder when it holds a
README.md or a dataset_infos.json. Nothing outside ``root`` is ever read: a
symlink or a ``data_files`` pattern leading out of it is refused.

Dataset ids are paths relative to ``root`` ("org/name"), or the folder's own
name when ``root`` is a dataset folder. A folder whose configs have data files
(``configs[].data_files``, else ``data/**`` for a single config) gets
``data_ref`` = its absolute path and up to two sample rows read straight from
the first .jsonl/.json/.csv/.parquet file (never through ``datasets``: slow).

>>> for item in FolderSource("dynogen/data/samples"):  # doctest: +SKIP
...     print(item.key)
ag_news::default
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from dynogen.errors import SourceError
from dynogen.io.cards import (
    SUMMARY_CHARS,
    CardError,
    DataFiles,
    RowsFound,
    build_units,
    split_card,
)
from dynogen.units import Skipped, SkipReason, Unit

__all__ = ["FolderSource", "SAMPLE_ROWS", "read_rows"]

SAMPLE_ROWS = 2
MARKERS = ("README.md", "dataset_infos.json")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt")
READABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
NOT_DATA = {"dataset_infos.json", "dataset_info.json", "README.md"}
MAX_JSON_ARRAY_BYTES = 32 * 1024 * 1024


class FolderSource:
    """Units from dataset folders under ``root``, in sorted, repeatable order.

    >>> source = FolderSource("/path/to/datasets")  # doctest: +SKIP
    >>> units = [u for u in source if isinstance(u, Unit)]  # doctest: +SKIP
    """

    def __init__(
        self, root: str | Path, *, max_depth: int = 3, summary_chars: int = SUMMARY_CHARS
    ) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise SourceError(f"metadata source {root} is not a folder")
        self.root = path.resolve()
        self.max_depth = max_depth
        self.summary_chars = summary_chars

    def describe(self) -> str:
        return f"dataset folders under {self.root}"

    def __iter__(self) -> Iterator[Unit | Skipped]:
        seen: set[str] = set()
        for found in self._dataset_dirs():
            if isinstance(found, Skipped):
                yield found
                continue
            dataset, folder = found
            for item in self._read_dataset(dataset, folder):
                if isinstance(item, Unit):
                    if item.key in seen:
                        yield Skipped(
                            item.dataset,
                            item.config,
                            SkipReason.DUPLICATE,
                            f"{folder} repeats a unit already read",
                        )
                        continue
                    seen.add(item.key)
                yield item

    # --- finding dataset folders ----------------------------------------------------------

    def _dataset_dirs(self) -> Iterator[tuple[str, Path] | Skipped]:
        root_names = _names(self.root)
        if _is_dataset(root_names) and not self._root_is_container(root_names):
            yield self.root.name, self.root
            return
        yield from self._walk(self.root, (), 1)

    def _root_is_container(self, names: set[str]) -> bool:
        """A README without a YAML header above dataset folders describes the collection."""
        if "dataset_infos.json" in names:
            return False
        if _read_head(self.root / "README.md").startswith("---"):
            return False
        return any(_is_dataset(_names(d)) for d in self._subdirs(self.root) if isinstance(d, Path))

    def _walk(
        self, folder: Path, parts: tuple[str, ...], depth: int
    ) -> Iterator[tuple[str, Path] | Skipped]:
        for sub in self._subdirs(folder):
            if isinstance(sub, Skipped):
                yield sub
                continue
            rel = (*parts, sub.name)
            if _is_dataset(_names(sub)):
                yield "/".join(rel), sub
            elif depth < self.max_depth:
                yield from self._walk(sub, rel, depth + 1)

    def _subdirs(self, folder: Path) -> Iterator[Path | Skipped]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith((".", "__")):
                continue
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            path = Path(entry.path)
            if entry.is_symlink() and not _inside(path, self.root):
                rel = path.relative_to(self.root).as_posix()
                yield Skipped(
                    rel,
                    "",
                    SkipReason.INVALID_METADATA,
                    f"{rel} links outside {self.root}; not followed",
                )
                continue
            yield path

    # --- one dataset folder ---------------------------------------------------------------

    def _read_dataset(self, dataset: str, folder: Path) -> Iterator[Unit | Skipped]:
        meta: dict[str, Any] = {}
        prose = ""
        readme = folder / "README.md"
        if readme.is_file():
            try:
                text = self._read_text(readme)
                meta, prose = split_card(text)
            except CardError as err:
                yield Skipped(dataset, "", SkipReason.INVALID_METADATA, f"README.md: {err}")
                return
            except (OSError, UnicodeDecodeError) as err:
                yield Skipped(
                    dataset, "", SkipReason.INVALID_METADATA, f"README.md unreadable: {err}"
                )
                return
        infos: dict[str, Any] | None = None
        infos_path = folder / "dataset_infos.json"
        if infos_path.is_file():
            try:
                loaded = orjson.loads(self._read_bytes(infos_path))
            except (OSError, orjson.JSONDecodeError) as err:
                yield Skipped(
                    dataset, "", SkipReason.INVALID_METADATA, f"dataset_infos.json: {err}"
                )
                return
            if not isinstance(loaded, dict):
                yield Skipped(
                    dataset,
                    "",
                    SkipReason.INVALID_METADATA,
                    "dataset_infos.json must map config names to objects",
                )
                return
            infos = loaded
        finder = _RowFinder(folder, self.root)
        yield from build_units(
            dataset,
            meta,
            prose,
            infos,
            origin="folder",
            rows=finder,
            summary_chars=self.summary_chars,
        )

    def _read_text(self, path: Path) -> str:
        return self._read_bytes(path).decode("utf-8")

    def _read_bytes(self, path: Path) -> bytes:
        if not _inside(path, self.root):
            raise OSError(f"{path.name} links outside {self.root}; not followed")
        return path.read_bytes()


class _RowFinder:
    """The ``rows`` callback for ``build_units``: data files of one folder, and samples."""

    def __init__(self, folder: Path, root: Path) -> None:
        self.folder = folder
        self.real = folder.resolve()
        self.root = root
        self._default: list[tuple[str, Path]] | None = None

    def __call__(self, config: str, data_files: DataFiles | None, sole: bool) -> RowsFound:
        if data_files is not None:
            files = self._glob(data_files)
        elif sole:
            files = self._default_files()
        else:
            files = []
        if not files:
            return RowsFound()
        splits = tuple(dict.fromkeys(split for split, _ in files))
        readable = [p for _, p in files if p.suffix in READABLE_SUFFIXES]
        if not readable:
            return RowsFound(
                data_ref=str(self.real),
                splits=splits,
                note="no .jsonl/.json/.csv/.parquet file to sample",
            )
        try:
            samples = tuple(read_rows(readable[0], SAMPLE_ROWS))
        except (OSError, ValueError, csv.Error) as err:
            return RowsFound(
                data_ref=str(self.real),
                splits=splits,
                note=f"could not sample {readable[0].name}: {err}",
            )
        return RowsFound(data_ref=str(self.real), samples=samples, splits=splits)

    def _glob(self, patterns: DataFiles) -> list[tuple[str, Path]]:
        out: list[tuple[str, Path]] = []
        for split, pattern in patterns:
            if (
                not pattern.strip()
                or "://" in pattern
                or pattern.startswith(("/", "\\"))
                or ".." in Path(pattern).parts
            ):
                continue  # remote, empty or outside the folder: never read
            try:
                matches = sorted(self.folder.glob(pattern))
            except ValueError:
                continue
            for path in matches:
                if path.is_file() and _inside(path, self.real):
                    out.append((split, path))
        return out

    def _default_files(self) -> list[tuple[str, Path]]:
        """Files ``datasets`` would find without a ``configs:`` block: data/** or top level."""
        if self._default is None:
            found: list[tuple[str, Path]] = []
            data_dir = self.folder / "data"
            if data_dir.is_dir() and _inside(data_dir, self.root):
                found = [
                    (_split_of(p), p)
                    for p in sorted(data_dir.rglob("*"))
                    if p.is_file() and p.suffix in DATA_SUFFIXES and _inside(p, self.root)
                ]
            if not found:
                found = [
                    (_split_of(p), p)
                    for p in sorted(self.folder.iterdir())
                    if p.is_file()
                    and p.suffix in DATA_SUFFIXES
                    and p.name not in NOT_DATA
                    and _inside(p, self.root)
                ]
            self._default = found
        return self._default


def read_rows(path: Path, n: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The first ``n`` rows of one data file, cheaply (never the whole file unless tiny).

    Raises ``OSError``/``ValueError``/``csv.Error`` for unreadable files.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # slow import: only when a parquet file is sampled

        batches = pq.ParquetFile(path).iter_batches(batch_size=n)
        first = next(iter(batches), None)
        rows = first.to_pylist()[:n] if first is not None else []
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [dict(row) for _, row in zip(range(n), reader, strict=False)]
    elif suffix == ".json" and _read_head(path).lstrip().startswith("["):
        if path.stat().st_size > MAX_JSON_ARRAY_BYTES:
            raise ValueError(f"{path.name} is a JSON array too large to sample cheaply")
        loaded = orjson.loads(path.read_bytes())
        rows = loaded[:n] if isinstance(loaded, list) else []
    elif suffix in (".jsonl", ".json"):
        rows = []
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    rows.append(orjson.loads(line))
                    if len(rows) >= n:
                        break
    else:
        raise ValueError(f"cannot sample {path.name}: unsupported format")
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path.name}: rows must be JSON objects")
    return [{str(k): _jsonable(v) for k, v in r.items()} for r in rows]


def _jsonable(value: Any) -> Any:
    """Rows go into JSON shards: bytes (images, audio) become a short placeholder."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _split_of(path: Path) -> str:
    stem = path.name.split(".")[0].lower()
    for split in ("train", "validation", "valid", "dev", "test"):
        if stem == split or stem.startswith((split + "-", split + "_")):
            return "validation" if split in ("valid", "dev") else split
    return "train"


def _names(folder: Path) -> set[str]:
    try:
        return {n for n in os.listdir(folder) if n in MARKERS}
    except OSError:
        return set()


def _is_dataset(names: set[str]) -> bool:
    return bool(names & set(MARKERS))


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _read_head(path: Path, size: int = 64) -> str:
    try:
        with path.open("rb") as fh:
            return fh.read(size).decode("utf-8", "replace").lstrip("\ufeff")
    except OSError:
        return ""
