"""Parquet files read in pieces, and viewer pages typed: the pure half of ``hub_rows``.

``hub_rows`` fetches byte ranges and pages; this turns them into rows, with no
I/O: a ``SparseFile`` is a file of which only some ranges were fetched (pyarrow
reads a footer and the row groups it is told to, nothing else), ``read_metadata``
parses a footer (``ParquetFooter`` keeps it with the ranges it came from),
``byte_span`` says which bytes some row groups take, ``decode_row_groups`` reads
them into rows. ``typed_rows`` casts a viewer page's
JSON rows to the features it carries. Media columns (image, audio, video)
become ``MediaCell``: like the decoded image ``datasets`` gives, no text.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynogen.io.rows import RowsReason, RowsUnavailable

__all__ = ["MEDIA_CELL", "MediaCell", "ParquetFooter", "SparseFile", "byte_span",
           "decode_row_groups", "features_of_metadata", "features_of_page", "footer_length",
           "is_media", "media_out", "read_metadata", "typed_rows"]

_MEDIA = frozenset({"Image", "Audio", "Video", "Pdf"})


class MediaCell:
    """A media value (image, audio, video) not decoded: it renders as no text."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MediaCell()"


MEDIA_CELL = MediaCell()


class SparseFile(io.RawIOBase):
    """A file of ``size`` bytes of which only ``parts`` were fetched (pyarrow reads these)."""

    def __init__(self, size: int, parts: list[tuple[int, bytes]]) -> None:
        self.size = size
        self.parts = sorted(parts)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the parts that cover it, one after another: a read may
        cross from one fetched range into the next (a footer longer than the first
        read, row groups that run on into the tail) as long as no byte is missing."""
        n = max(0, min(len(buffer), self.size - self.pos))
        out = memoryview(buffer).cast("B")
        done = 0
        for start, chunk in self.parts:  # sorted by start; they may overlap
            at = self.pos + done
            if done >= n or start > at:
                break
            end = start + len(chunk)
            if at < end:
                take = min(n - done, end - at)
                out[done:done + take] = memoryview(chunk)[at - start:at - start + take]
                done += take
        if done < n:
            raise OSError(f"bytes {self.pos + done}-{self.pos + n} were not fetched")
        self.pos += n
        return n


@dataclass(frozen=True, slots=True)
class ParquetFooter:
    """A Parquet file's parsed footer (``meta``) and the byte ranges fetched to read it
    (``parts``: the file's tail, which for a small file is all of it).

    ``url`` is the file's address (its ``/resolve/`` URL once known). ``to_dict`` keeps
    the footer's bytes only (JSON-safe, base64) and ``from_dict`` parses them again,
    so a planner can hand a file's footer to whoever reads its row groups."""

    url: str
    size: int
    length: int  # the footer's length, as its last 8 bytes say
    parts: tuple[tuple[int, bytes], ...]
    meta: Any = field(compare=False, repr=False)

    @classmethod
    def parse(cls, url: str, size: int, length: int,
              parts: Sequence[tuple[int, bytes]]) -> ParquetFooter:
        """The footer among ``parts`` (``load_error`` if it does not parse)."""
        return cls(url, size, length, tuple(parts), read_metadata(list(parts), size, length, url))

    @property
    def start(self) -> int:
        """The first byte fetched: row groups before it are still to be fetched."""
        return min((first for first, _ in self.parts), default=self.size)

    def raw(self) -> bytes:
        """The footer's bytes and the file's last 8 (its length, ``PAR1``)."""
        blob = SparseFile(self.size, list(self.parts))
        blob.seek(self.size - self.length - 8)
        return blob.read(self.length + 8)

    def footer_only(self) -> ParquetFooter:
        """This footer keeping only its own bytes of what was fetched (one held per file
        of a split: the row groups a 256 KiB tail also brought would add up)."""
        first = self.size - self.length - 8
        if self.start >= first:
            return self
        return ParquetFooter(self.url, self.size, self.length, ((first, self.raw()),),
                             self.meta)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "length": self.length,
                "footer": base64.b64encode(self.raw()).decode("ascii")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParquetFooter:
        size, length = int(d["size"]), int(d["length"])
        raw = base64.b64decode(str(d["footer"]))
        return cls.parse(str(d["url"]), size, length, [(size - length - 8, raw)])


def footer_length(tail: bytes, url: str) -> int:
    """The footer's length from a file's last 8 bytes (``load_error`` if not Parquet)."""
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise RowsUnavailable(RowsReason.LOAD_ERROR, f"{url} is not a Parquet file")
    return int(struct.unpack("<I", tail[-8:-4])[0])


def read_metadata(parts: list[tuple[int, bytes]], size: int, footer: int, url: str) -> Any:
    """The footer's ``FileMetaData``, read from the fetched ``parts`` alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blob = SparseFile(size, parts)
    blob.seek(size - footer - 8)
    try:
        raw = blob.read(footer + 8)
        return pq.read_metadata(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise RowsUnavailable(RowsReason.LOAD_ERROR, f"{url}: footer: {e}") from None


def byte_span(meta: Any, groups: list[int]) -> tuple[int, int]:
    """``(first, end)`` byte offsets the column chunks of ``groups`` take in the file."""
    lo, hi = None, 0
    for g in groups:
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            first = col.dictionary_page_offset if col.has_dictionary_page else \
                col.data_page_offset
            lo = first if lo is None else min(lo, first)
            hi = max(hi, first + col.total_compressed_size)
    return lo or 0, hi


def features_of_metadata(meta: Any) -> Any:
    """The ``datasets`` features the schema's ``huggingface`` metadata holds (else inferred)."""
    from datasets import Features

    return Features.from_arrow_schema(meta.schema.to_arrow_schema())


def decode_row_groups(parts: list[tuple[int, bytes]], size: int, meta: Any, groups: list[int],
                      need: int, url: str) -> tuple[list[dict[str, Any]], Any]:
    """The first ``need`` rows of row groups ``groups`` (their bytes among ``parts``),
    media columns as ``MediaCell``, and the file's features."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(SparseFile(size, parts), metadata=meta).read_row_groups(groups)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise RowsUnavailable(RowsReason.LOAD_ERROR, f"{url}: {type(e).__name__}: {e}") from None
    features = features_of_metadata(meta)
    return media_out(table.slice(0, need).to_pylist(), features), features


# --------------------------------------------------------------- viewer pages, pure
def features_of_page(page: Mapping[str, Any]) -> Any:
    """The features a viewer ``/rows`` page carries (``/info``'s for its config), or ``None``."""
    from datasets import Features

    listed = page.get("features")
    if not isinstance(listed, list):
        return None
    try:
        return Features.from_dict({str(f["name"]): f["type"] for f in listed})
    except (KeyError, TypeError, ValueError):
        return None


def typed_rows(rows: list[dict[str, Any]], features: Any) -> list[dict[str, Any]]:
    """JSON rows cast to ``features`` column by column (a column that will not cast stays
    as JSON gave it), media replaced by ``MediaCell``."""
    if not features or not rows:
        return rows
    import pyarrow as pa

    schema = features.arrow_schema
    columns: dict[str, list[Any]] = {}
    for name in features:
        if is_media(features[name]) or name not in rows[0]:
            continue
        values = [r.get(name) for r in rows]
        try:
            columns[name] = pa.array(values, type=schema.field(name).type).to_pylist()
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            continue
    out = []
    for i, row in enumerate(rows):
        typed = {k: (columns[k][i] if k in columns else v) for k, v in row.items()}
        out.append(typed)
    return media_out(out, features)


def media_out(rows: list[dict[str, Any]], features: Any) -> list[dict[str, Any]]:
    """``rows`` with every media column's value replaced by ``MEDIA_CELL`` (in place)."""
    media = [k for k in (features or {}) if is_media(features[k])]
    if media:
        for row in rows:
            for k in media:
                if k in row:
                    row[k] = MEDIA_CELL
    return rows


def is_media(feature: Any) -> bool:
    """Whether a ``datasets`` feature is an image, audio, video or PDF."""
    return type(feature).__name__ in _MEDIA
