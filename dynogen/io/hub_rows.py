"""Rows of Hugging Face Hub datasets, read concurrently under the Hub's rate limits.

The instance stage needs the first few hundred rows of each allowed split of
thousands of datasets. ``datasets`` streaming opens one dataset at a time
(repository resolution, file listing, then the first file: 1-3 s each) outside
any limiter; this reads exactly the rows wanted with one to three small calls
per split, any number of datasets at once, each call under its Hub rate-limit
bucket with retries (``hub_http``, ``hub_buckets``).

Which path serves which split
    * **the viewer's ``/rows``** when one page (100 rows) holds every row the
      split needs (``rows_per_split`` at most 100, as when the data policies
      check 60 rows): one call, a small JSON answer typed by the features it
      carries (``/info``'s for that config), no file listing. A page with a cell
      the viewer cut (``truncated_cells``) would give a wrong instance, so such a
      split, and one the viewer has no rows for, is read from Parquet instead.
    * **the Parquet conversion** otherwise (``refs/convert/parquet``, which the
      Hub keeps for every dataset the viewer can read, with the features in its
      schema): ``{config}/{split}/0000.parquet`` is resolved directly (no listing
      call) and read by HTTP range: the last 256 KiB first (the footer, and the
      whole file for a small dataset), then the byte range of the first row
      groups that hold the rows wanted. Resolves are the Hub bucket with the
      highest limit. A partial conversion (``partial-{split}/``) or other layout is
      found through the Hub API's ``/parquet`` listing when the direct name is not
      there. When the row groups needed are larger than ``max_range_bytes`` (very
      wide rows), the split is read from viewer pages, leaving out rows with cut cells.

Rows are cast to the features: ClassLabel columns keep their integer ids and
``RowsInfo.labels`` their names, exactly as ``datasets`` gives them (see
``rows.label_names`` and ``instances.render``); media columns (image, audio,
video) become a ``MediaCell``, which, like the decoded image ``datasets`` gives,
renders as no text.

Failures are one ``RowsUnavailable``: ``gated`` (401/403 ``GatedRepo``: no token, or
one without access), ``not_found``, ``no_data_files`` (no Parquet conversion: a
script-only or unreadable dataset), ``config_not_found``, ``split_not_found``,
``no_training_split``, ``load_error`` (a file that does not parse); and, once
the retries are spent, the transient ``rate_limited``, ``server_error``,
``timeout``, ``connection_error``, ``offline`` (``RowsUnavailable.retryable``).

No engine or store dependency: a plain module a Ray row stage can import
(parsing is in ``hub_parquet``, the HTTP and its limits in ``hub_http`` and
``hub_buckets``). One ``HubRowReader`` per event loop.

>>> reader = HubRowReader.open(rpm=300, concurrency=8)        # doctest: +SKIP
>>> rows = await reader.read("stanfordnlp/imdb", "plain_text", splits=("train",),
...                          rows_per_split=200)              # doctest: +SKIP
>>> rows.info.labels["label"], rows.via                        # doctest: +SKIP
(('neg', 'pos'), 'parquet')
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from dynogen.config import Secret
from dynogen.io.hub_buckets import HubBuckets
from dynogen.io.hub_http import BodyTooLarge, HubAnswer, HubHttp, HubHTTPError, HubUnreachable
from dynogen.io.hub_parquet import (
    MediaCell,
    ParquetFooter,
    byte_span,
    decode_row_groups,
    features_of_metadata,
    features_of_page,
    footer_length,
    typed_rows,
)
from dynogen.io.hub_viewer import DEFAULT_VIEWER_URL
from dynogen.io.rows import RowsInfo, RowsReason, RowsUnavailable, UnitRows, label_names
from dynogen.ratelimit import Clock, RetryPolicy

__all__ = ["MAX_RANGE_BYTES", "PAGE_ROWS", "TAIL_BYTES", "HubRowReader", "MediaCell",
           "choose_splits", "default_endpoint", "environment_token", "first_failure",
           "rows_errors", "rows_info"]  # MediaCell lives in hub_parquet, the module's pure half

PAGE_ROWS = 100  # the viewer's page size
TAIL_BYTES = 256 * 1024  # the first read of a Parquet file: its footer, or all of a small one
MAX_RANGE_BYTES = 32 * 1024 * 1024  # the most bytes of row groups read for one split
# The conversion cuts a split into files of hundreds of MB; a file found by its name (no
# listing) that is smaller than this is the split's last, so no call asks for the next.
NEXT_SHARD_BYTES = 64 * 1024 * 1024
PARQUET_BRANCH = "refs%2Fconvert%2Fparquet"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

Allow = Callable[[str], bool]


class _TooLarge(Exception):
    """The row groups a split needs are over ``max_range_bytes``."""


def environment_token() -> Secret:
    """``HF_TOKEN`` (or a stored ``huggingface-cli login``) of this process's environment,
    as a ``Secret``: a worker on another machine reads its own, none is ever sent to it."""
    from huggingface_hub import get_token

    return Secret(get_token())


def default_endpoint() -> str:
    """``HF_ENDPOINT``, else ``huggingface_hub``'s endpoint (https://huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


class HubRowReader:
    """The first rows of a Hub dataset's splits, by viewer pages or Parquet ranges.

    ``http`` carries the buckets, the retry policy and the token. See the module
    docstring for which path serves which split.
    """

    def __init__(self, http: HubHttp, *, endpoint: str | None = None,
                 viewer_url: str | None = DEFAULT_VIEWER_URL, viewer_rows: int = PAGE_ROWS,
                 tail_bytes: int = TAIL_BYTES, max_range_bytes: int = MAX_RANGE_BYTES,
                 next_shard_bytes: int = NEXT_SHARD_BYTES) -> None:
        self.http = http
        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        self.viewer_url = viewer_url.rstrip("/") if viewer_url else None
        self.viewer_rows = min(viewer_rows, PAGE_ROWS)
        self.tail_bytes = tail_bytes
        self.max_range_bytes = max_range_bytes
        self.next_shard_bytes = next_shard_bytes

    @classmethod
    def open(cls, *, rpm: float | None = 300.0, concurrency: int = 8, token: Secret | None = None,
             endpoint: str | None = None, viewer_url: str | None = DEFAULT_VIEWER_URL,
             retry: RetryPolicy | None = None, clock: Clock | None = None,
             **options: Any) -> HubRowReader:
        """A reader with its own buckets (``rpm`` and ``concurrency`` each) and HTTP client."""
        buckets = HubBuckets(rpm=rpm, concurrency=concurrency, clock=clock,
                             viewer_url=viewer_url)
        http = HubHttp(buckets, retry=retry, token=token,
                       max_body=options.pop("max_body", TAIL_BYTES + MAX_RANGE_BYTES))
        return cls(http, endpoint=endpoint, viewer_url=viewer_url, **options)

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------- one unit
    async def read(self, dataset: str, config: str | None, *, splits: Sequence[str] | None = None,
                   rows_per_split: int, allow: Allow | None = None) -> UnitRows:
        """Up to ``rows_per_split`` rows of each split (``splits`` in that order, else the
        conversion's), leaving out splits ``allow`` refuses. Raises ``RowsUnavailable``."""
        if rows_per_split < 0:
            raise ValueError("rows_per_split must be >= 0")
        unit = _Unit(self, dataset, config or "default")
        with rows_errors(dataset, unit.config):
            return await unit.read(splits, rows_per_split, allow)

    # ------------------------------------------------- the conversion's files, shared
    async def parquet_listing(self, dataset: str, config: str) -> dict[str, list[str]]:
        """``{split: [file URLs]}`` of a config's conversion (one Hub API call; ``no_data_files``
        or ``config_not_found`` when it is not there, a second call telling which)."""
        try:
            answer = await self.http.get(self.listing_url(dataset, config),
                                         what="Hub API /parquet")
        except HubHTTPError as err:
            if err.status != 404 or err.code in ("RepoNotFound", "GatedRepo"):
                raise
            if await self._has_conversion(dataset, config):
                raise RowsUnavailable(RowsReason.CONFIG_NOT_FOUND,
                                      f"{dataset} has no config {config!r}") from None
            raise RowsUnavailable(RowsReason.NO_DATA_FILES,
                                  f"{dataset}: no Parquet conversion (script-only, or not "
                                  f"readable by the dataset viewer): {err}") from None
        data = answer.json()
        if not isinstance(data, Mapping):
            raise RowsUnavailable(RowsReason.LOAD_ERROR, f"{dataset}: odd /parquet answer")
        return {str(k): [str(u) for u in v] for k, v in data.items() if isinstance(v, list)}

    async def _has_conversion(self, dataset: str, config: str) -> bool:
        url = self.listing_url(dataset, config).rpartition("/")[0]
        try:
            await self.http.get(url, what="Hub API /parquet")
        except HubHTTPError as err:
            if err.status == 404 and err.code not in ("RepoNotFound", "GatedRepo"):
                return False
            raise
        return True

    async def footer(self, url: str) -> ParquetFooter:
        """A Parquet file's footer: its last ``tail_bytes`` (all of a small file) in one
        ranged call, and the rest of a longer footer in a second. ``url`` of the result
        is the file's ``/resolve/`` URL when ``url`` redirected there (an API link)."""
        http = self.http
        tail = await http.get(url, headers={"Range": f"bytes=-{self.tail_bytes}"},
                              what="Parquet footer", max_body=self.tail_bytes + 1024)
        start, size = _span(tail)
        parts = [(start, tail.body)]
        length = footer_length(tail.body, url)
        if length + 8 > len(tail.body):
            first = size - length - 8
            more = await http.get(url, headers={"Range": f"bytes={first}-{start - 1}"},
                                  what="Parquet footer", max_body=self.max_range_bytes)
            parts.append((first, more.body))
        home = tail.url if "/resolve/" in tail.url else url
        return ParquetFooter.parse(home, size, length, parts)

    async def byte_range(self, url: str, first: int, end: int) -> list[tuple[int, bytes]]:
        """Bytes ``first`` to ``end`` (exclusive) of a file, as ``(offset, bytes)`` parts, in
        ranged calls of at most ``max_range_bytes`` each (made at once)."""
        step = max(1, self.max_range_bytes)
        spans = [(lo, min(end, lo + step)) for lo in range(first, end, step)]
        got: list[Any] = await asyncio.gather(
            *(self.http.get(url, headers={"Range": f"bytes={lo}-{hi - 1}"},
                            what="Parquet row groups", max_body=self.max_range_bytes + 1024)
              for lo, hi in spans), return_exceptions=True)
        first_failure(got)
        return [(_span(answer)[0], answer.body) for answer in got]

    # ----------------------------------------------------------------- addresses
    def file_url(self, dataset: str, config: str, split: str, shard: int) -> str:
        return (f"{self.endpoint}/datasets/{dataset}/resolve/{PARQUET_BRANCH}/"
                f"{_q(config)}/{_q(split)}/{shard:04d}.parquet")

    def listing_url(self, dataset: str, config: str) -> str:
        return f"{self.endpoint}/api/datasets/{dataset}/parquet/{_q(config)}"


class _Unit:
    """One ``read``: the splits of one dataset config, and its listing once if needed."""

    def __init__(self, reader: HubRowReader, dataset: str, config: str) -> None:
        self.r = reader
        self.dataset = dataset
        self.config = config
        self._listing: asyncio.Task[dict[str, list[str]]] | None = None
        self.dropped = 0
        self.via: set[str] = set()

    async def read(self, splits: Sequence[str] | None, n: int, allow: Allow | None) -> UnitRows:
        order = choose_splits(self.dataset, list(splits) if splits else list(await self.listing()),
                              allow)
        results: list[Any] = await asyncio.gather(*(self.split(s, n) for s in order),
                                       return_exceptions=True)
        first_failure(results)  # the first failure in split order, the same every time
        found = [(s, got) for s, got in zip(order, results, strict=True) if got is not None]
        info = rows_info(self.dataset, order, [(s, f) for s, (_, f) in found])
        rows = tuple((s, row) for s, (got, _) in found for row in got)
        return UnitRows(info, rows, via="+".join(sorted(self.via)) or "parquet",
                        dropped=self.dropped)

    async def listing(self) -> dict[str, list[str]]:
        """``{split: [file URLs]}`` of this config's conversion (one API call, shared)."""
        if self._listing is None:
            self._listing = asyncio.ensure_future(self._fetch_listing())
        return await asyncio.shield(self._listing)

    async def _fetch_listing(self) -> dict[str, list[str]]:
        return await self.r.parquet_listing(self.dataset, self.config)

    # --------------------------------------------------------------- one split
    async def split(self, split: str, n: int) -> tuple[list[dict[str, Any]], Any] | None:
        """``(rows, features)`` of ``split``, or ``None`` if the dataset has no such split."""
        if n == 0:
            return [], None
        if self.r.viewer_url and n <= self.r.viewer_rows:
            got = await self.pages(split, n, strict=True)
            if got is not None:
                self.via.add("viewer")
                return got
        try:
            got = await self.parquet(split, n)
        except _TooLarge as err:
            got = await self.pages(split, n, strict=False) if self.r.viewer_url else None
            if got is None:
                raise RowsUnavailable(RowsReason.LOAD_ERROR, f"{self.dataset}: {err}") from None
            self.via.add("viewer")
            return got
        if got is not None:
            self.via.add("parquet")
        return got

    async def pages(self, split: str, n: int, *,
                    strict: bool) -> tuple[list[dict[str, Any]], Any] | None:
        """Rows from viewer pages; ``None`` if the viewer has none, or (``strict``) cut some."""
        assert self.r.viewer_url is not None
        rows: list[dict[str, Any]] = []
        features = None
        offset = 0
        while len(rows) < n:
            params = {"dataset": self.dataset, "config": self.config, "split": split,
                      "offset": str(offset), "length": str(min(PAGE_ROWS, n - len(rows)))}
            try:
                answer = await self.r.http.get(f"{self.r.viewer_url}/rows", params,
                                               what="viewer /rows")
            except HubHTTPError as err:
                if _transient(err):
                    raise
                return None  # not the viewer's to say: Parquet gives the definitive answer
            page = answer.json()
            items = page.get("rows") if isinstance(page, Mapping) else None
            if not isinstance(items, list):
                return None
            if features is None:
                features = features_of_page(page)
            for item in items:
                if item.get("truncated_cells"):
                    if strict:
                        return None
                    self.dropped += 1
                    continue
                rows.append(dict(item.get("row") or {}))
            offset += len(items)
            total = page.get("num_rows_total")
            if not items or (isinstance(total, int) and offset >= total):
                break
        return typed_rows(rows[:n], features), features

    async def parquet(self, split: str, n: int) -> tuple[list[dict[str, Any]], Any] | None:
        """Rows from the conversion's files: the direct name, else the API's listing."""
        urls: list[str] | None = None
        if self._listing is not None and self._listing.done() and not self._listing.exception():
            urls = self._listing.result().get(split, [])  # listed already: no guessing
            if not urls:
                return None
        url = urls[0] if urls else self.r.file_url(self.dataset, self.config, split, 0)
        rows: list[dict[str, Any]] = []
        features = None
        shard = 0
        while len(rows) < n:
            try:
                got, feats, whole, size = await self.file(url, n - len(rows))
            except HubHTTPError as err:
                if err.status != 404 or err.code in ("RepoNotFound", "GatedRepo"):
                    raise
                if shard == 0 and urls is None:
                    urls = (await self.listing()).get(split, [])
                    if not urls:
                        return None
                    url = urls[0]
                    continue
                break  # no further file: the split has fewer rows than wanted
            rows.extend(got)
            features = features if features is not None else feats
            if not whole:
                break
            shard += 1
            if urls is not None:
                if shard >= len(urls):
                    break
                url = urls[shard]
            elif size >= self.r.next_shard_bytes:
                url = self.r.file_url(self.dataset, self.config, split, shard)
            else:
                break  # a small file found by name is the split's last
        return rows, features

    async def file(self, url: str, need: int) -> tuple[list[dict[str, Any]], Any, bool, int]:
        """The first ``need`` rows of one Parquet file, its features, whether it had no
        more rows than that (so the next file may hold the rest), and its size."""
        footer = await self.r.footer(url)
        meta, size, start = footer.meta, footer.size, footer.start
        parts = list(footer.parts)
        groups, total = [], 0
        for i in range(meta.num_row_groups):
            if total >= need:
                break
            groups.append(i)
            total += meta.row_group(i).num_rows
        if not groups:
            return [], features_of_metadata(meta), True, size
        lo, hi = byte_span(meta, groups)
        if lo < start:
            if hi - lo > self.r.max_range_bytes:
                raise _TooLarge(f"the first row groups of {url} are {hi - lo} bytes, over "
                                f"{self.r.max_range_bytes}")
            parts += await self.r.byte_range(url, lo, min(hi, start))
        rows, features = await asyncio.to_thread(decode_row_groups, parts, size, meta, groups,
                                                 need, url)
        return rows, features, meta.num_rows <= need, size


# ------------------------------------------------------------------ ranged answers
def _span(answer: HubAnswer) -> tuple[int, int]:
    """``(first byte, file size)`` of a ranged answer (a 200 is the whole file)."""
    if answer.status == 206:
        m = _CONTENT_RANGE.match(answer.headers.get("Content-Range", ""))
        if m is None:
            raise HubHTTPError(206, "BadRange", "a partial answer without Content-Range")
        return int(m.group(1)), int(m.group(3))
    return 0, len(answer.body)


# ------------------------------------------------------------- one unit's shape, pure
def choose_splits(dataset: str, order: list[str], allow: Allow | None) -> list[str]:
    """The splits to read, in ``order``, that ``allow`` allows (``no_data_files`` when there
    are none at all, ``no_training_split`` when the policy refuses every one)."""
    if not order:
        raise RowsUnavailable(RowsReason.NO_DATA_FILES,
                              f"{dataset}: no split in its Parquet conversion")
    if allow is not None:
        kept = [s for s in order if allow(s)]
        if not kept:
            raise RowsUnavailable(
                RowsReason.NO_TRAINING_SPLIT,
                f"{dataset}: no split the split policy allows among {order} "
                "(--splits all lifts it)")
        order = kept
    return order


def rows_info(dataset: str, order: Sequence[str],
              found: Sequence[tuple[str, Any]]) -> RowsInfo:
    """What a unit's rows are: ``found`` is ``(split, features or None)`` of the splits of
    ``order`` that exist, in order; the features are the first split's that has some
    (``split_not_found`` when none exists)."""
    if not found:
        raise RowsUnavailable(RowsReason.SPLIT_NOT_FOUND,
                              f"{dataset}: none of the splits {list(order)} exist")
    features = next((f for _, f in found if f is not None), None)
    there = {s for s, _ in found}
    return RowsInfo(features=features, labels=label_names(features),
                    splits=tuple(s for s, _ in found),
                    missing_splits=tuple(s for s in order if s not in there),
                    columns=tuple(features) if features else ())


def first_failure(results: Sequence[Any]) -> None:
    """Raise the first exception among ``gather(..., return_exceptions=True)``'s results."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


# ------------------------------------------------------------------- errors, pure
@contextmanager
def rows_errors(dataset: str, config: str) -> Iterator[None]:
    """Hub failures as ``RowsUnavailable`` (see the module docstring); ``offline`` up front.

    ``dataset`` and ``config`` name what was read in the details (a file's URL and its
    split do too)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise RowsUnavailable(RowsReason.OFFLINE,
                              f"{dataset}: the Hub is offline (HF_HUB_OFFLINE)")
    try:
        yield
    except HubHTTPError as err:
        raise RowsUnavailable(*_reason(err, dataset, config)) from None
    except HubUnreachable as err:
        raise RowsUnavailable(RowsReason.CONNECTION, f"{dataset}: {err}") from None
    except BodyTooLarge as err:
        raise RowsUnavailable(RowsReason.LOAD_ERROR, f"{dataset}: {err}") from None


def _transient(err: HubHTTPError) -> bool:
    return err.status == 0 or err.status == 429 or err.status >= 500


def _reason(err: HubHTTPError, dataset: str, config: str) -> tuple[str, str]:
    """A Hub error (after the retries) as ``(RowsReason, detail)``."""
    detail = f"{dataset} [{config}]: {err}"
    if err.status == 429:
        return RowsReason.RATE_LIMITED, detail
    if err.status >= 500:
        return RowsReason.SERVER_ERROR, detail
    if err.status == 0:
        return (RowsReason.TIMEOUT if err.code == "Timeout" else RowsReason.CONNECTION), detail
    if err.code == "GatedRepo" or (err.status in (401, 403) and err.code != "RepoNotFound"):
        return RowsReason.GATED, (f"{detail} (a gated dataset: accept its terms on the Hub and "
                                  "set HF_TOKEN to a token of that account)")
    if err.status in (401, 404) or err.code in ("RepoNotFound", "RevisionNotFound",
                                                 "DisabledRepo"):
        return RowsReason.NOT_FOUND, detail
    return RowsReason.LOAD_ERROR, detail


def _q(part: str) -> str:
    return quote(part, safe="")
