"""A Hub dataset's Parquet conversion cut into pieces that workers read apart.

``hub_rows.HubRowReader.read`` reads a Hub unit whole, in one process. The
sharded build reads it as it reads a local folder (``row_files``): a planner
cuts it into pieces, and workers read the pieces in parallel.

``plan_hub_pieces`` (the driver)
    lists the config's conversion (one Hub API ``/parquet`` call), chooses the
    splits as ``read`` does (same order, same split policy, same
    ``RowsUnavailable`` reasons), fetches each file's footer by range (as
    ``read`` does: the last ``tail_bytes``, the rest of a longer footer after)
    and cuts each file into pieces of consecutive row groups, up to
    ``piece_bytes`` compressed bytes and ``piece_rows`` rows (a larger row group
    is a piece of its own). ``limit`` rows per split are taken across the
    split's files in order, as ``read`` takes them: the last piece may carry a
    ``limit`` of rows to take. It answers the unit's ``RowsInfo`` (features from
    the first file's schema, ClassLabel names in ``labels``) and the pieces.
    A piece is a ``row_files.Piece``: ``path`` is the file's ``/resolve/`` URL
    (the listing's API link is followed once, so workers' reads count against
    the Hub's resolvers bucket, not its API one), ``row_groups`` its row groups,
    ``file_index`` the file's place in the split's listing and ``first_row`` the
    row its first row group starts at in the file, so
    ``(split_index, file_index, first_row + i)`` orders rows as ``read`` gives them.

``read_hub_piece`` (a worker)
    fetches the file's footer (unless handed it: ``footers`` of the planner,
    through ``ParquetFooter.to_dict``/``from_dict``) and the byte span of the
    piece's row groups, in ranged calls of at most ``max_range_bytes`` each, and
    decodes them as ``read`` does (``hub_parquet.decode_row_groups``: the file's
    own schema, ClassLabel ids, media as ``MediaCell``).

The rows of all pieces, in order, are ``read(..., rows_per_split=N).rows`` for any
``N`` that ``read`` serves from Parquet (over ``viewer_rows``, or ``sys.maxsize``:
every row). Failures are ``RowsUnavailable`` exactly as ``read``'s: ``gated``,
``not_found``, ``no_data_files``, ``config_not_found``, ``split_not_found``,
``no_training_split``, ``load_error``, and, once the reader's retries are spent,
the transient ``rate_limited``, ``server_error``, ``timeout``,
``connection_error``, ``offline`` (``retryable``).

Each call takes a ``HubRowReader`` (its HTTP client, buckets, retries and
token): on a worker, a fresh one inside ``asyncio.run``::

    # the driver
    reader = HubRowReader.open(rpm=300, concurrency=8, token=environment_token())
    info, pieces = await plan_hub_pieces(reader, "org/set", "default", splits=None,
                                         allow=policy.allows, limit=200)
    specs = [p.to_dict() for p in pieces]            # JSON-safe

    # a worker
    async def read(spec):
        reader = HubRowReader.open(rpm=300, concurrency=8, token=environment_token())
        try:
            return await read_hub_piece(reader, Piece.from_dict(spec))
        finally:
            await reader.aclose()
    rows = asyncio.run(read(spec))
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from dynogen.io.hub_http import HubHTTPError
from dynogen.io.hub_parquet import (
    ParquetFooter,
    byte_span,
    decode_row_groups,
    features_of_metadata,
)
from dynogen.io.hub_rows import (
    HubRowReader,
    choose_splits,
    first_failure,
    rows_errors,
    rows_info,
)
from dynogen.io.row_files import PIECE_ROWS, Piece
from dynogen.io.rows import RowsInfo, RowsReason, RowsUnavailable

__all__ = ["PIECE_BYTES", "plan_hub_pieces", "read_hub_piece"]

# Consecutive row groups of one file are one piece up to this many compressed bytes
# (two ranged calls at the reader's default ``max_range_bytes``).
PIECE_BYTES = 64 * 1024 * 1024


async def plan_hub_pieces(reader: HubRowReader, dataset: str, config: str | None, *,
                          splits: Sequence[str] | None, allow: Callable[[str], bool] | None,
                          limit: int | None, piece_bytes: int = PIECE_BYTES,
                          piece_rows: int = PIECE_ROWS,
                          footers: MutableMapping[str, ParquetFooter] | None = None,
                          ) -> tuple[RowsInfo, list[Piece]]:
    """The unit's ``RowsInfo`` and its pieces, in ``read``'s order.

    ``splits``: these, in this order (else the conversion's); ``allow``: the split
    policy; ``limit``: rows per split (``None`` or ``sys.maxsize``: all of them; the
    files' footers are fetched as many at once as the reader's buckets let through,
    but one first when a cap may need one file only); a piece is at most
    ``piece_bytes`` compressed bytes and ``piece_rows`` rows unless one row group is
    more. ``footers``, when given, is filled with the footer of each file that has
    pieces, by its URL (their ``path``), to hand to ``read_hub_piece``.
    Raises ``RowsUnavailable``."""
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0 (or None: every row)")
    if piece_bytes < 1 or piece_rows < 1:
        raise ValueError("piece_bytes and piece_rows must be at least 1")
    name = config or "default"
    plan = _Plan(reader, limit, piece_bytes, piece_rows, footers)
    with rows_errors(dataset, name):
        listing = await reader.parquet_listing(dataset, name)
        order = choose_splits(dataset, list(splits) if splits else list(listing), allow)
        results: list[Any] = await asyncio.gather(
            *(plan.split(s, listing.get(s) or []) for s in order), return_exceptions=True)
        first_failure(results)  # the first failure in split order, as ``read``
    found = [(s, got) for s, got in zip(order, results, strict=True) if got is not None]
    info = rows_info(dataset, order, [(s, features) for s, (_, features) in found])
    pieces = [dataclasses.replace(p, split_index=i)
              for i, (_, (got, _)) in enumerate(found) for p in got]
    return info, pieces


async def read_hub_piece(reader: HubRowReader, piece: Piece, *,
                         footer: ParquetFooter | None = None) -> list[dict[str, Any]]:
    """The piece's rows, in order, typed as ``HubRowReader.read`` types Parquet rows.

    ``footer``: the file's, from the planner (used when its URL is the piece's path),
    saving a call. Raises ``RowsUnavailable`` (``load_error`` if the file is no longer
    the one planned)."""
    groups = list(piece.row_groups)
    with rows_errors(piece.path, piece.split):
        if not groups or piece.limit == 0:
            return []
        if footer is None or footer.url != piece.path:
            footer = await reader.footer(piece.path)
        meta = footer.meta
        total = _rows_of(piece, meta)
        lo, hi = byte_span(meta, groups)
        parts = list(footer.parts)
        if lo < footer.start:
            parts += await reader.byte_range(piece.path, lo, min(hi, footer.start))
        need = total if piece.limit is None else min(piece.limit, total)
        rows, _ = await asyncio.to_thread(decode_row_groups, parts, footer.size, meta, groups,
                                          need, piece.path)
    return rows


# ------------------------------------------------------------------------ planning
class _Plan:
    """One ``plan_hub_pieces``: its settings, shared by its splits."""

    def __init__(self, reader: HubRowReader, limit: int | None, piece_bytes: int,
                 piece_rows: int, footers: MutableMapping[str, ParquetFooter] | None) -> None:
        self.r = reader
        self.limit = limit
        self.piece_bytes = piece_bytes
        self.piece_rows = piece_rows
        self.footers = footers
        self.window = max(1, reader.http.buckets.max_in_flight)

    async def split(self, split: str, urls: list[str]) -> tuple[list[Piece], Any] | None:
        """``(pieces, features)`` of one split, or ``None`` if the listing has no such split.

        As ``read``: files in order until ``limit`` rows; a listed file that is not
        there (404) ends the split; the features are its first file's."""
        if not urls:
            return None
        if self.limit == 0:
            return [], None
        pieces: list[Piece] = []
        features = None
        remaining = self.limit
        i = rows_seen = 0
        while i < len(urls) and (remaining is None or remaining > 0):
            batch = urls[i:i + self._ahead(i, rows_seen, remaining)]
            got: list[Any] = await asyncio.gather(*(self._footer(u) for u in batch),
                                                  return_exceptions=True)
            for footer in got:
                if remaining is not None and remaining <= 0:
                    break  # fetched ahead, not needed (``read`` would not have asked)
                if isinstance(footer, BaseException):
                    raise footer
                if footer is None:
                    return pieces, features  # a missing file ends the split, as in ``read``
                if features is None:
                    features = features_of_metadata(footer.meta)
                cut, taken = self._cut(footer, split, i, remaining)
                pieces += cut
                if self.footers is not None and cut:
                    self.footers[footer.url] = footer
                rows_seen += footer.meta.num_rows
                if remaining is not None:
                    remaining -= taken
                i += 1
        return pieces, features

    def _ahead(self, done: int, rows_seen: int, remaining: int | None) -> int:
        """How many footers to fetch at once: one to begin with when a few rows may do,
        then as many as the rows still wanted will likely take (at most ``window``)."""
        if remaining is None:
            return self.window
        if done == 0:
            return 1
        per_file = max(1, rows_seen // done)
        return max(1, min(self.window, math.ceil(remaining / per_file)))

    async def _footer(self, url: str) -> ParquetFooter | None:
        """The file's footer (only: the tail's row group bytes are let go), ``None`` if the
        listed file is not there."""
        try:
            footer = (await self.r.footer(url)).footer_only()
        except HubHTTPError as err:
            if err.status != 404 or err.code in ("RepoNotFound", "GatedRepo"):
                raise
            return None
        return footer

    def _cut(self, footer: ParquetFooter, split: str, file_index: int,
             remaining: int | None) -> tuple[list[Piece], int]:
        """One file's pieces up to ``remaining`` rows, and how many rows they take."""
        meta = footer.meta
        pieces: list[Piece] = []
        groups: list[int] = []
        first_row = offset = rows = size = 0
        for g in range(meta.num_row_groups):
            if remaining is not None and offset >= remaining:
                break
            n = meta.row_group(g).num_rows
            lo, hi = byte_span(meta, [g])
            if groups and (size + hi - lo > self.piece_bytes or rows + n > self.piece_rows):
                pieces.append(Piece(split, 0, file_index, footer.url, tuple(groups), first_row,
                                    None, rows))
                groups, rows, size = [], 0, 0
            if not groups:
                first_row = offset
            groups.append(g)
            rows += n
            size += hi - lo
            offset += n
        if groups:
            pieces.append(Piece(split, 0, file_index, footer.url, tuple(groups), first_row,
                                None, rows))
        if remaining is None or offset <= remaining:
            return pieces, offset
        last = pieces[-1]
        pieces[-1] = dataclasses.replace(last, limit=remaining - last.first_row)
        return pieces, remaining


# ------------------------------------------------------------------------- reading
def _rows_of(piece: Piece, meta: Any) -> int:
    """Rows in the piece's row groups, checked against the plan (a conversion redone
    since then has other row groups)."""
    if any(g < 0 or g >= meta.num_row_groups for g in piece.row_groups):
        total = -1
    else:
        total = sum(meta.row_group(g).num_rows for g in piece.row_groups)
    if total < 0 or (piece.rows is not None and total != piece.rows):
        raise RowsUnavailable(RowsReason.LOAD_ERROR,
                              f"{piece.path} [{piece.split}]: row groups {piece.name} are not "
                              "the ones planned (the conversion changed since)")
    return total
