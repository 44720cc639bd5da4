"""Dataset metadata from the Hugging Face Hub.

Lists datasets with ``HfApi.list_datasets``, then reads each card (README.md)
and, when the card has no ``dataset_info`` features, ``dataset_infos.json``.
The API object is injected (``HubApi`` protocol) so tests replay recorded
answers; ``huggingface_hub`` is imported only when a real API is needed.

Failures split in two: the Hub being unreachable (or offline mode) stops the
source with a ``SourceError`` the user can act on; a failure that concerns one
dataset (gated, gone, bad card, a 5xx) becomes a counted ``Skipped``.

>>> for item in HubSource(search="glue", limit=5):  # doctest: +SKIP
...     print(item.key)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from dynogen.errors import SourceError
from dynogen.io.cards import SUMMARY_CHARS, CardError, RowsFound, build_units, split_card
from dynogen.units import Skipped, SkipReason, Unit

__all__ = ["HubApi", "HubSkip", "HubSource", "LIST_EXPAND"]

# Listing properties we read: siblings tell which files exist, saving a 404 per dataset.
LIST_EXPAND = ["gated", "disabled", "private", "siblings", "tags"]
OFFLINE_HINT = "use --source PATH (a folder or .jsonl shards) or unset HF_HUB_OFFLINE"
UNREACHABLE_HINT = "use --source PATH (a folder or .jsonl shards) or check the network"


class HubSkip:
    """Counted reasons for Hub datasets that could not be read (besides invalid_metadata)."""

    GATED = "gated"
    NOT_FOUND = "not_found"
    DISABLED = "disabled"
    HUB_ERROR = "hub_error"


class HubApi(Protocol):
    """The part of ``huggingface_hub.HfApi`` this source uses."""

    def list_datasets(
        self,
        *,
        filter: str | Iterable[str] | None = None,
        author: str | None = None,
        search: str | None = None,
        limit: int | None = None,
        expand: list[Any] | None = None,
    ) -> Iterable[Any]: ...

    def hf_hub_download(
        self, repo_id: str, filename: str, *, repo_type: str | None = None
    ) -> str: ...


class _Missing:
    """A file the dataset does not have (a 404 on the file, not the repository)."""


_MISSING = _Missing()


class HubSource:
    """Units for Hub datasets; ``data_ref`` is the Hub id (rows via ``datasets`` streaming).

    >>> source = HubSource(filter="task_categories:text-classification", limit=20)  # doctest: +SKIP
    """

    def __init__(
        self,
        api: HubApi | None = None,
        *,
        search: str | None = None,
        filter: str | Iterable[str] | None = None,
        author: str | None = None,
        limit: int | None = None,
        with_rows: bool = True,
        summary_chars: int = SUMMARY_CHARS,
    ) -> None:
        self._api = api
        self.search = search
        self.filter = filter if filter is None or isinstance(filter, str) else list(filter)
        self.author = author
        self.limit = limit
        self.with_rows = with_rows
        self.summary_chars = summary_chars

    def describe(self) -> str:
        parts = [
            f"{k}={v!r}"
            for k, v in (
                ("search", self.search),
                ("filter", self.filter),
                ("author", self.author),
                ("limit", self.limit),
            )
            if v
        ]
        return "Hugging Face Hub datasets" + (f" ({', '.join(parts)})" if parts else "")

    def __iter__(self) -> Iterator[Unit | Skipped]:
        api = self._api if self._api is not None else _default_api()
        listing = self._call(
            lambda: iter(
                api.list_datasets(
                    search=self.search,
                    filter=self.filter,
                    author=self.author,
                    limit=self.limit,
                    expand=list(LIST_EXPAND),
                )
            ),
            "list datasets",
        )
        while True:
            info = self._call(lambda: next(listing, None), "list datasets")
            if info is None:
                return
            yield from self._dataset(api, info)

    def _dataset(self, api: HubApi, info: Any) -> Iterator[Unit | Skipped]:
        repo_id = str(info.id)
        if getattr(info, "disabled", None):
            yield Skipped(repo_id, "", HubSkip.DISABLED, "the dataset is disabled on the Hub")
            return
        siblings = getattr(info, "siblings", None)
        files = {s.rfilename for s in siblings} if siblings is not None else None

        readme = self._fetch(api, repo_id, "README.md", files)
        if isinstance(readme, Skipped):
            yield readme
            return
        meta: dict[str, Any] = {}
        prose = ""
        if isinstance(readme, str):
            try:
                meta, prose = split_card(readme)
            except CardError as err:
                yield Skipped(repo_id, "", SkipReason.INVALID_METADATA, f"README.md: {err}")
                return

        infos: dict[str, Any] | None = None
        if not _card_has_features(meta):
            raw = self._fetch(api, repo_id, "dataset_infos.json", files)
            if isinstance(raw, Skipped):
                yield raw
                return
            if isinstance(raw, str):
                try:
                    loaded = orjson.loads(raw)
                except orjson.JSONDecodeError as err:
                    yield Skipped(
                        repo_id, "", SkipReason.INVALID_METADATA, f"dataset_infos.json: {err}"
                    )
                    return
                if not isinstance(loaded, dict):
                    yield Skipped(
                        repo_id,
                        "",
                        SkipReason.INVALID_METADATA,
                        "dataset_infos.json must map config names to objects",
                    )
                    return
                infos = loaded
        if readme is _MISSING and infos is None:
            yield Skipped(
                repo_id, "", SkipReason.INVALID_METADATA, "no README.md and no dataset_infos.json"
            )
            return

        hub_tags = tuple(
            t for t in (getattr(info, "tags", None) or ()) if isinstance(t, str) and ":" in t
        )
        rows = RowsFound(data_ref=repo_id) if self.with_rows else RowsFound()
        for item in build_units(
            repo_id,
            meta,
            prose,
            infos,
            origin="hub",
            rows=lambda _cfg, _files, _sole: rows,
            summary_chars=self.summary_chars,
        ):
            if isinstance(item, Unit) and not item.tags and hub_tags:
                item = _with_tags(item, hub_tags)
            yield item

    def _fetch(
        self, api: HubApi, repo_id: str, filename: str, files: set[str] | None
    ) -> str | _Missing | Skipped:
        """A repository file's text, ``_MISSING`` if absent, or why the dataset is skipped."""
        if files is not None and filename not in files:
            return _MISSING
        from huggingface_hub import errors as hf

        try:
            path = api.hf_hub_download(repo_id, filename, repo_type="dataset")
        except (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError) as err:
            raise _offline_error(err) from None
        except hf.GatedRepoError:
            return Skipped(
                repo_id,
                "",
                HubSkip.GATED,
                "gated: accept its terms on the Hub and log in to read it",
            )
        except (hf.RepositoryNotFoundError, hf.RevisionNotFoundError):
            return Skipped(repo_id, "", HubSkip.NOT_FOUND, "the Hub has no such dataset (404)")
        except hf.DisabledRepoError:
            return Skipped(repo_id, "", HubSkip.DISABLED, "the dataset is disabled on the Hub")
        except hf.EntryNotFoundError:
            return _MISSING
        except hf.HfHubHTTPError as err:
            return Skipped(repo_id, "", HubSkip.HUB_ERROR, f"{filename}: {_first_line(err)}")
        except _transport_errors() as err:
            raise SourceError(
                f"the Hugging Face Hub is unreachable ({_first_line(err)}): {UNREACHABLE_HINT}"
            ) from None
        try:
            return Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            return Skipped(repo_id, "", SkipReason.INVALID_METADATA, f"{filename} is not UTF-8")
        except OSError as err:
            return Skipped(repo_id, "", HubSkip.HUB_ERROR, f"{filename} unreadable: {err}")

    @staticmethod
    def _call(fn: Any, what: str) -> Any:
        """Run a listing step, turning connectivity and listing failures into ``SourceError``."""
        from huggingface_hub import errors as hf

        try:
            return fn()
        except hf.OfflineModeIsEnabled as err:
            raise _offline_error(err) from None
        except hf.HfHubHTTPError as err:
            raise SourceError(
                f"the Hugging Face Hub refused to {what} ({_first_line(err)}): "
                "check the search/filter and your Hugging Face token"
            ) from None
        except _transport_errors() as err:
            raise SourceError(
                f"the Hugging Face Hub is unreachable ({_first_line(err)}): {UNREACHABLE_HINT}"
            ) from None


def _default_api() -> HubApi:
    from huggingface_hub import HfApi

    api: HubApi = HfApi()
    return api


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures below HTTP: the Hub cannot be reached at all.

    ``huggingface_hub`` has used requests, httpx and httpx2 across versions.
    """
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests.exceptions", "ConnectionError"),
        ("requests.exceptions", "Timeout"),
    ):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _offline_error(err: BaseException) -> SourceError:
    return SourceError(
        f"the Hugging Face Hub is unreachable or offline mode is on "
        f"({_first_line(err)}): {OFFLINE_HINT}"
    )


def _card_has_features(meta: dict[str, Any]) -> bool:
    info = meta.get("dataset_info")
    entries = info if isinstance(info, list) else [info]
    return any(isinstance(e, dict) and "features" in e for e in entries)


def _with_tags(unit: Unit, tags: tuple[str, ...]) -> Unit:
    return Unit(
        dataset=unit.dataset,
        config=unit.config,
        description=unit.description,
        fields=unit.fields,
        license=unit.license,
        tags=tags,
        splits=unit.splits,
        samples=unit.samples,
        data_ref=unit.data_ref,
        origin=unit.origin,
        extra=unit.extra,
    )


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:200] + "…") if len(text) > 200 else (text or type(err).__name__)
