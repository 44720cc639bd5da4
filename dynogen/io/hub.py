"""Dataset metadata from the Hugging Face Hub, at scale.

A listing through ``huggingface_hub`` (``HfApi.list_datasets`` with filters,
sort and ``expand``), then per dataset: its card (``README.md``) and, from the
dataset viewer's API, ``/is-valid``, ``/info`` (features, splits) and
``/first-rows`` (a few rows become the unit's ``samples``), instead of
downloading any data file. Datasets that are private, disabled, only a
loading script, or that the viewer cannot open are skipped with counted
reasons (``HubSkip``), decided from the listing where possible so they cost no
call. A gated dataset is skipped from the listing when there is no token; with
one (``HF_TOKEN``) it is read if the Hub grants that account access, and skipped
as gated if not.

Concurrency: the per-dataset calls run on an event loop in a worker thread
(``prefetch.ordered_prefetch``), up to ``fetch_ahead`` datasets at once, each
call under its Hub rate-limit bucket (``hub_buckets``: ``rpm`` and
``concurrency``, and what the Hub's headers say) with retries (``hub_http``).
Results come out in listing order, so a run over the
same listing is deterministic and the engine's synchronous reading is unchanged.

Incremental listing: ``modified_since`` keeps only datasets whose last
modification is at or after that time. Sorted by ``last_modified`` (the
default when ``modified_since`` is set) the listing stops at the first older
dataset; under another sort, older datasets are counted as
``not_modified_since`` skips. ``grow`` passes the last version's time here.

Failures: the Hub being unreachable (or offline mode) stops the source with a
``SourceError`` the user can act on; a failure that concerns one dataset
becomes a counted ``Skipped``. ``HF_TOKEN`` (or a stored login) is sent when
present and never written anywhere.

>>> opts = HubOptions(task_categories=("text-classification",), datasets=200,
...                   sort="downloads")
>>> for item in HubSource(options=opts):  # doctest: +SKIP
...     print(item.key)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from dynogen.config import Secret
from dynogen.errors import SourceError
from dynogen.io.cards import SUMMARY_CHARS, CardError, RowsFound, build_units, split_card
from dynogen.io.hub_buckets import HubBuckets
from dynogen.io.hub_http import (
    BodyTooLarge,
    HubHttp,
    HubHTTPError,
    HubHttpStats,
    HubUnreachable,
)
from dynogen.io.hub_options import HUB_SORTS, HubOptions, HubSkip
from dynogen.io.hub_viewer import Viewer, pick_split, viewer_skip
from dynogen.io.nearcopy import NEAR_COPY, NearCopies
from dynogen.io.prefetch import ordered_prefetch
from dynogen.ratelimit import Clock, RetryPolicy
from dynogen.units import Skipped, SkipReason, Unit

__all__ = ["HUB_SORTS", "HubApi", "HubOptions", "HubSkip", "HubSource", "HubStats", "LIST_EXPAND"]

# Listing properties we read: each saves a call (siblings: is there a card, is it a script).
LIST_EXPAND = ["gated", "disabled", "private", "siblings", "tags", "lastModified"]
OFFLINE_HINT = "use --source PATH (a folder or .jsonl shards) or unset HF_HUB_OFFLINE"
UNREACHABLE_HINT = "use --source PATH (a folder or .jsonl shards) or check the network"
_LISTING_BATCH = 50  # listing entries pulled per limiter permit
_DATA_SUFFIXES = (".parquet", ".csv", ".tsv", ".json", ".jsonl", ".txt", ".arrow", ".zip",
                  ".gz", ".tar", ".xz", ".zst", ".bz2", ".xml", ".h5", ".npy", ".npz")


@dataclass(slots=True)
class HubStats:
    """What the last iteration did: datasets listed, outcomes by reason, HTTP counts."""

    listed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    http: HubHttpStats = field(default_factory=HubHttpStats)

    def to_dict(self) -> dict[str, Any]:
        return {"listed": self.listed, "outcomes": dict(self.outcomes), "http": self.http.to_dict()}


class HubApi(Protocol):
    """The part of ``huggingface_hub.HfApi`` this source uses (keyword arguments only)."""

    def list_datasets(
        self,
        *,
        filter: str | Iterable[str] | None = None,
        author: str | None = None,
        task_categories: str | list[str] | None = None,
        search: str | None = None,
        sort: Any = None,
        limit: int | None = None,
        expand: Any = None,
    ) -> Iterable[Any]: ...


class HubSource:
    """Units for Hub datasets; ``data_ref`` is the Hub id (rows via ``hub_rows.HubRowReader``).

    ``api`` replaces the listing client (tests); ``clock``/``retry`` tune the
    HTTP side. ``stats`` describes the last completed or current iteration.
    """

    def __init__(
        self,
        api: HubApi | None = None,
        *,
        options: HubOptions | None = None,
        with_rows: bool = True,
        summary_chars: int = SUMMARY_CHARS,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        **listing: Any,
    ) -> None:
        base = options if options is not None else HubOptions()
        self.options = dataclasses.replace(base, **listing) if listing else base
        self._api = api
        self.with_rows = with_rows
        self.summary_chars = summary_chars
        self.retry = retry
        self.clock = clock
        self.stats = HubStats()
        self.listed_at: datetime | None = None

    def describe(self) -> str:
        o = self.options
        parts = [
            f"{k}={v!r}"
            for k, v in (
                ("search", o.search),
                ("task_categories", list(o.task_categories)),
                ("filter", list(o.filter)),
                ("author", o.author),
                ("modified_since", o.modified_since.isoformat() if o.modified_since else None),
                ("datasets", o.datasets),
                ("sort", o.effective_sort),
            )
            if v
        ]
        return "Hugging Face Hub datasets" + (f" ({', '.join(parts)})" if parts else "")

    def snapshot(self) -> dict[str, Any]:
        """What the last iteration listed and when (``source.json`` beside collected shards).

        ``listed_at`` is taken before the listing starts, so a later incremental
        listing with ``modified_since=listed_at`` misses nothing changed meanwhile.
        """
        o = self.options
        return {
            "source": "hub",
            "listed_at": self.listed_at.isoformat() if self.listed_at else None,
            "options": {
                "search": o.search, "task_categories": list(o.task_categories),
                "filter": list(o.filter), "author": o.author,
                "modified_since": o.modified_since.isoformat() if o.modified_since else None,
                "datasets": o.datasets, "sort": o.effective_sort,
                "viewer_url": o.viewer_url, "sample_rows": o.sample_rows,
            },
            "stats": self.stats.to_dict(),
        }

    def __iter__(self) -> Iterator[Unit | Skipped]:
        from huggingface_hub import constants

        self.listed_at = datetime.now(UTC)

        if constants.is_offline_mode():
            raise SourceError(f"the Hugging Face Hub is offline (HF_HUB_OFFLINE): {OFFLINE_HINT}")
        self.stats = HubStats()
        job = _HubJob(self, self._api if self._api is not None else _default_api(self))
        copies = NearCopies() if self.options.near_copies else None
        for items in ordered_prefetch(job, window=self.options.fetch_ahead):
            for item in items:
                if copies is not None and isinstance(item, Unit):
                    first = copies.check(item)
                    if first is not None:
                        item = Skipped(item.dataset, item.config, NEAR_COPY,
                                       f"same features and card text as {first}; processed once")
                self.stats.outcomes["unit" if isinstance(item, Unit) else item.reason] += 1
                yield item


def _endpoint(options: HubOptions) -> str:
    from huggingface_hub import constants

    return (options.endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _token() -> Secret:
    from huggingface_hub import get_token

    return Secret(get_token())


def _default_api(source: HubSource) -> HubApi:
    from huggingface_hub import HfApi

    token = _token().get()
    api: HubApi = HfApi(endpoint=_endpoint(source.options), token=token or False)
    return api


class _HubJob:
    """Runs on the prefetch loop: the listing, then one ``fetch`` per listed dataset."""

    def __init__(self, source: HubSource, api: HubApi) -> None:
        o = source.options
        self.source = source
        self.options = o
        self.api = api
        self.buckets = HubBuckets(rpm=o.rpm, concurrency=o.concurrency, clock=source.clock,
                                  viewer_url=o.viewer_url)
        self.token = _token()
        self.http = HubHttp(self.buckets, retry=source.retry, token=self.token,
                            max_body=o.max_body, clock=source.clock)
        source.stats.http = self.http.stats
        self.viewer = Viewer(self.http, o.viewer_url)
        self.endpoint = _endpoint(o)

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------ listing
    async def items(self) -> AsyncIterator[Any]:
        o = self.options
        since = o.modified_since
        stop_at_older = since is not None and o.effective_sort == "last_modified"
        kwargs: dict[str, Any] = {"expand": list(LIST_EXPAND)}
        for key, value in (("search", o.search), ("author", o.author),
                           ("task_categories", list(o.task_categories) or None),
                           ("filter", list(o.filter) or None), ("sort", o.effective_sort),
                           ("limit", o.datasets)):
            if value is not None:
                kwargs[key] = value
        if o.datasets == 0:
            return
        listing = iter(_listing_call(lambda: self.api.list_datasets(**kwargs)))
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1, thread_name_prefix="dynogen-hub-listing")
        try:
            while True:
                permit = await self.buckets.acquire("api")
                try:
                    batch, more = await loop.run_in_executor(
                        pool, _take, listing, _LISTING_BATCH, since if stop_at_older else None)
                finally:
                    self.buckets.release("api", permit)
                for info in batch:
                    self.source.stats.listed += 1
                    yield info
                if not more:
                    return
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------- one dataset
    async def fetch(self, info: Any) -> list[Unit | Skipped]:
        repo_id = str(info.id)
        early = self._listing_skip(repo_id, info)
        if early is not None:
            return [early]
        siblings = getattr(info, "siblings", None)
        files = {s.rfilename for s in siblings} if siblings is not None else None
        try:
            if not await self.viewer.is_valid(repo_id):
                return [Skipped(repo_id, "", HubSkip.VIEWER_INVALID,
                                "the dataset viewer has no preview of this dataset")]
            want_card = files is None or "README.md" in files
            card, infos = await asyncio.gather(
                self._card(repo_id) if want_card else _none(), self.viewer.info(repo_id)
            )
        except HubUnreachable as err:
            raise SourceError(f"the Hugging Face Hub is unreachable ({err}): {UNREACHABLE_HINT}") \
                from None
        except HubHTTPError as err:
            if getattr(info, "gated", None) and err.status in (401, 403, 404):
                return [Skipped(repo_id, "", HubSkip.GATED,
                                f"gated, and HF_TOKEN's account has no access: {err}")]
            return [_http_skip(repo_id, "", err)]
        except BodyTooLarge as err:
            return [Skipped(repo_id, "", HubSkip.TOO_LARGE, str(err))]
        except ValueError as err:  # an answer that is not what the viewer documents
            return [Skipped(repo_id, "", HubSkip.VIEWER_INVALID, f"viewer: {err}")]
        meta: dict[str, Any] = {}
        prose = ""
        if card is not None:
            try:
                meta, prose = split_card(card)
            except CardError as err:
                return [Skipped(repo_id, "", SkipReason.INVALID_METADATA, f"README.md: {err}")]
        rows = RowsFound(data_ref=repo_id) if self.source.with_rows else RowsFound()
        built = list(build_units(repo_id, meta, prose, infos, origin="hub",
                                 rows=lambda _cfg, _files, _sole: rows,
                                 summary_chars=self.source.summary_chars))
        hub_tags = tuple(t for t in (getattr(info, "tags", None) or ())
                         if isinstance(t, str) and ":" in t)
        return await self._with_rows(built, hub_tags)

    async def _with_rows(self, built: list[Unit | Skipped],
                         hub_tags: tuple[str, ...]) -> list[Unit | Skipped]:
        out: list[Unit | Skipped | None] = []
        jobs: list[tuple[int, Unit]] = []
        for item in built:
            if isinstance(item, Unit):
                if item.tags == () and hub_tags:
                    item = dataclasses.replace(item, tags=hub_tags)
                if len(jobs) >= self.options.max_configs:
                    item = Skipped(item.dataset, item.config, HubSkip.TOO_MANY_CONFIGS,
                                   f"only the first {self.options.max_configs} configs are read")
                elif self.options.sample_rows > 0:
                    jobs.append((len(out), item))
                    out.append(None)
                    continue
            out.append(item)
        results = await asyncio.gather(*(self._samples(unit) for _, unit in jobs))
        for (i, _), result in zip(jobs, results, strict=True):
            out[i] = result
        return [x for x in out if x is not None]

    async def _samples(self, unit: Unit) -> Unit | Skipped:
        split = pick_split(unit.splits)
        if split is None:
            return unit  # no split known: the unit stands on its metadata alone
        try:
            samples = await self.viewer.first_rows(unit.dataset, unit.config, split,
                                                   self.options.sample_rows)
        except HubUnreachable as err:
            raise SourceError(f"the Hugging Face Hub is unreachable ({err}): {UNREACHABLE_HINT}") \
                from None
        except HubHTTPError as err:
            return _http_skip(unit.dataset, unit.config, err, viewer=True)
        except BodyTooLarge as err:
            return Skipped(unit.dataset, unit.config, HubSkip.TOO_LARGE, f"first rows: {err}")
        except ValueError as err:
            return Skipped(unit.dataset, unit.config, HubSkip.VIEWER_INVALID, f"viewer: {err}")
        return dataclasses.replace(unit, samples=samples)

    async def _card(self, repo_id: str) -> str | None:
        """The card's text, ``None`` if the repository has none (any other failure raises)."""
        try:
            url = f"{self.endpoint}/datasets/{repo_id}/resolve/main/README.md"
            answer = await self.http.get(url, what="README.md")
        except HubHTTPError as err:
            if err.status == 404 and err.code == "EntryNotFound":
                return None
            raise
        try:
            return answer.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HubHTTPError(200, "NotUtf8", "README.md: not UTF-8") from None

    def _listing_skip(self, repo_id: str, info: Any) -> Skipped | None:
        if getattr(info, "private", None):
            return Skipped(repo_id, "", HubSkip.PRIVATE, "private dataset")
        if getattr(info, "disabled", None):
            return Skipped(repo_id, "", HubSkip.DISABLED, "the dataset is disabled on the Hub")
        gated = getattr(info, "gated", None)
        if gated and not self.token:
            # Without a token the answer is known; with one, the Hub says if it grants access.
            return Skipped(repo_id, "", HubSkip.GATED,
                           f"gated ({gated}): its terms must be accepted on the Hub, and "
                           "HF_TOKEN set to a token of an account that did")
        since = self.options.modified_since
        modified = _last_modified(info)
        if since is not None and modified is not None and modified < since:
            return Skipped(repo_id, "", HubSkip.NOT_MODIFIED,
                           f"last modified {modified.isoformat()}, before {since.isoformat()}")
        siblings = getattr(info, "siblings", None)
        if siblings is not None and _script_only(repo_id, [s.rfilename for s in siblings]):
            return Skipped(repo_id, "", HubSkip.SCRIPT_ONLY,
                           "a loading script without data files (the viewer does not run scripts)")
        return None


async def _none() -> None:
    return None


def _take(it: Iterator[Any], n: int, older_than: datetime | None) -> tuple[list[Any], bool]:
    """Up to ``n`` listing entries, and whether more may follow.

    With ``older_than``, the first entry modified before it ends the listing (it
    is sorted newest first), so no further page is fetched.
    """

    def pull() -> tuple[list[Any], bool]:
        batch: list[Any] = []
        for info in it:
            modified = _last_modified(info)
            if older_than is not None and modified is not None and modified < older_than:
                return batch, False
            batch.append(info)
            if len(batch) >= n:
                return batch, True
        return batch, False

    result: tuple[list[Any], bool] = _listing_call(pull)
    return result


def _last_modified(info: Any) -> datetime | None:
    value = getattr(info, "last_modified", None)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def _script_only(repo_id: str, files: list[str]) -> bool:
    name = repo_id.rpartition("/")[2]
    has_script = any(f == f"{name}.py" for f in files)
    has_data = any(f.lower().endswith(_DATA_SUFFIXES) for f in files)
    return has_script and not has_data


def _http_skip(dataset: str, config: str, err: HubHTTPError, *, viewer: bool = False) -> Skipped:
    code = err.code
    if code == "GatedRepo":
        return Skipped(dataset, config, HubSkip.GATED, f"gated: {err.message}")
    if code in ("RepoNotFound", "RevisionNotFound"):
        return Skipped(dataset, config, HubSkip.NOT_FOUND, "the Hub has no such dataset (404)")
    if code == "DisabledRepo":
        return Skipped(dataset, config, HubSkip.DISABLED, "the dataset is disabled on the Hub")
    reason, detail = viewer_skip(err)
    if not viewer and reason == HubSkip.VIEWER_INVALID and err.status != 0 and not code:
        reason = HubSkip.HUB_ERROR  # a plain Hub refusal (not the viewer's)
    return Skipped(dataset, config, reason, detail)


def _listing_call(fn: Callable[[], Any]) -> Any:
    """Run a listing step, turning connectivity and listing failures into ``SourceError``."""
    from huggingface_hub import errors as hf

    try:
        return fn()
    except hf.OfflineModeIsEnabled as err:
        raise SourceError(
            f"the Hugging Face Hub is unreachable or offline mode is on "
            f"({_first_line(err)}): {OFFLINE_HINT}"
        ) from None
    except hf.HfHubHTTPError as err:
        raise SourceError(
            f"the Hugging Face Hub refused to list datasets ({_first_line(err)}): "
            "check the search/filter and your Hugging Face token"
        ) from None
    except _transport_errors() as err:
        raise SourceError(
            f"the Hugging Face Hub is unreachable ({_first_line(err)}): {UNREACHABLE_HINT}"
        ) from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures below HTTP (``huggingface_hub`` has used requests, httpx, httpx2)."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "ConnectionError"),
                         ("requests.exceptions", "Timeout")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:200] + "…") if len(text) > 200 else (text or type(err).__name__)
