"""HubSource against recorded Hub answers (tests/fixtures/hub), and offline behaviour."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub import errors as hf
from huggingface_hub.hf_api import DatasetInfo
from huggingface_hub.utils import hf_raise_for_status

from dynogen.errors import SourceError
from dynogen.io import HubSkip, HubSource, open_source
from dynogen.io.hub import LIST_EXPAND
from dynogen.units import Skipped, SkipReason, Unit

RECORDED = Path(__file__).parent / "fixtures" / "hub"


class ReplayHub:
    """Serves recorded answers through the real ``DatasetInfo`` and error classes."""

    def __init__(
        self,
        root: Path = RECORDED,
        *,
        listing_error: BaseException | None = None,
        download_error: BaseException | None = None,
    ) -> None:
        self.root = root
        self.listing = json.loads((root / "list_datasets.json").read_text("utf-8"))["response"]
        self.responses = json.loads((root / "responses.json").read_text("utf-8"))
        self.listing_error = listing_error
        self.download_error = download_error
        self.calls: list[tuple[str, Any]] = []

    def list_datasets(
        self,
        *,
        filter: str | Iterable[str] | None = None,
        author: str | None = None,
        search: str | None = None,
        limit: int | None = None,
        expand: list[Any] | None = None,
    ) -> Iterator[Any]:
        self.calls.append(
            (
                "list_datasets",
                {
                    "filter": filter,
                    "author": author,
                    "search": search,
                    "limit": limit,
                    "expand": expand,
                },
            )
        )
        return self._pages(limit)

    def _pages(self, limit: int | None) -> Iterator[Any]:
        # Like HfApi's paginated generator, nothing is fetched until the first next().
        if self.listing_error is not None:
            raise self.listing_error
        for item in self.listing[:limit]:
            yield DatasetInfo(**item)

    def hf_hub_download(self, repo_id: str, filename: str, *, repo_type: str | None = None) -> str:
        self.calls.append(("download", f"{repo_id}/{filename}"))
        assert repo_type == "dataset"
        if self.download_error is not None:
            raise self.download_error
        recorded = self.responses.get(f"{repo_id}/{filename}")
        url = f"https://huggingface.co/datasets/{repo_id}/resolve/main/{filename}"
        if recorded is not None:
            response = httpx2.Response(
                recorded["status"],
                headers=recorded["headers"],
                json=recorded["body"],
                request=httpx2.Request("GET", url),
            )
            hf_raise_for_status(response)  # raises the real huggingface_hub error
        path = self.root / "files" / repo_id / filename
        if not path.is_file():
            response = httpx2.Response(
                404, headers={"X-Error-Code": "EntryNotFound"}, request=httpx2.Request("GET", url)
            )
            hf_raise_for_status(response)
        return str(path)

    def downloads(self) -> list[str]:
        return [arg for name, arg in self.calls if name == "download"]


def by_dataset(items: list[Unit | Skipped]) -> dict[str, list[Unit | Skipped]]:
    out: dict[str, list[Unit | Skipped]] = {}
    for item in items:
        out.setdefault(item.dataset, []).append(item)
    return out


def test_replayed_listing_gives_units_and_counted_skips() -> None:
    api = ReplayHub()
    got = by_dataset(list(HubSource(api)))
    assert list(got) == [item["id"] for item in api.listing]  # listing order, nothing dropped

    cola, sst2 = got["nyu-mll/glue"]
    assert isinstance(cola, Unit) and isinstance(sst2, Unit)
    assert (cola.config, sst2.config) == ("cola", "sst2")
    assert cola.field("label").labels == ("unacceptable", "acceptable")
    assert cola.data_ref == "nyu-mll/glue" and cola.origin == "hub" and cola.samples == ()
    assert cola.splits == ("test", "train", "validation")
    assert cola.license == "cc-by-4.0"
    assert cola.description.startswith("GLUE, the General Language Understanding")

    (ag,) = got["fancyzhx/ag_news"]  # card without dataset_info: dataset_infos.json fallback
    assert isinstance(ag, Unit) and ag.config == "default"
    assert ag.field("label").labels == ("World", "Sports", "Business", "Sci/Tech")
    assert ag.description.startswith("AG is a collection of more than 1 million news articles")

    def skip(dataset: str, config: str = "") -> Skipped:
        (item,) = got[dataset]
        assert isinstance(item, Skipped) and item.config == config
        return item

    assert skip("gated-org/secret-dialogues").reason == HubSkip.GATED
    assert skip("someone/deleted-meanwhile").reason == HubSkip.NOT_FOUND
    assert skip("someone/taken-down").reason == HubSkip.DISABLED
    flaky = skip("someone/flaky")
    assert flaky.reason == HubSkip.HUB_ERROR and "502" in flaky.detail
    bad = skip("someone/bad-card")
    assert bad.reason == SkipReason.INVALID_METADATA and "invalid YAML" in bad.detail
    nofeat = skip("someone/no-features", "default")  # declared in `configs:`, no features
    assert nofeat.reason == SkipReason.INVALID_METADATA and "has no features" in nofeat.detail
    empty = skip("someone/empty-repo")
    assert empty.reason == SkipReason.INVALID_METADATA and "no README.md" in empty.detail


def test_only_needed_files_are_requested() -> None:
    api = ReplayHub()
    list(HubSource(api))
    downloads = api.downloads()
    # glue's card has features: no dataset_infos.json request; ag_news needs it.
    assert "nyu-mll/glue/dataset_infos.json" not in downloads
    assert "fancyzhx/ag_news/dataset_infos.json" in downloads
    # disabled repos and files absent from the listing's siblings are never requested
    assert not [d for d in downloads if d.startswith(("someone/taken-down", "someone/empty-repo"))]
    assert "someone/no-features/dataset_infos.json" not in downloads


def test_listing_arguments_pass_through_and_rows_can_be_off() -> None:
    api = ReplayHub()
    source = HubSource(
        api, search="glue", filter=["language:en"], author="nyu-mll", limit=1, with_rows=False
    )
    got = list(source)
    assert api.calls[0] == (
        "list_datasets",
        {
            "filter": ["language:en"],
            "author": "nyu-mll",
            "search": "glue",
            "limit": 1,
            "expand": LIST_EXPAND,
        },
    )
    assert [u.key for u in got] == ["nyu-mll/glue::cola", "nyu-mll/glue::sst2"]
    assert all(isinstance(u, Unit) and u.data_ref is None for u in got)
    assert "search='glue'" in source.describe()


def test_hub_tags_are_used_when_the_card_has_none(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    (root / "files" / "x" / "plain").mkdir(parents=True)
    (root / "files" / "x" / "plain" / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: text\n    dtype: string\n---\nPlain.\n", "utf-8"
    )
    (root / "list_datasets.json").write_text(
        json.dumps(
            {
                "response": [
                    {
                        "id": "x/plain",
                        "tags": ["language:en", "region:us", "nocolon"],
                        "siblings": [{"rfilename": "README.md"}],
                    }
                ]
            }
        ),
        "utf-8",
    )
    (root / "responses.json").write_text("{}", "utf-8")
    (u,) = HubSource(ReplayHub(root))
    assert isinstance(u, Unit) and u.tags == ("language:en", "region:us")
    assert u.description == "Plain."


@pytest.mark.parametrize(
    "error,needle",
    [
        (
            hf.OfflineModeIsEnabled(
                "Cannot reach https://huggingface.co/api/datasets: offline mode is enabled."
            ),
            "unset HF_HUB_OFFLINE",
        ),
        (httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"), "unreachable"),
    ],
)
def test_offline_or_unreachable_listing_is_a_source_error(
    error: BaseException, needle: str
) -> None:
    source = HubSource(ReplayHub(listing_error=error))
    with pytest.raises(SourceError) as info:
        list(source)
    assert needle in str(info.value) and "--source PATH" in str(info.value)


def test_a_refused_listing_is_a_source_error() -> None:
    url = "https://huggingface.co/api/datasets"
    response = httpx2.Response(
        401,
        json={"error": "Invalid credentials in Authorization header"},
        request=httpx2.Request("GET", url),
    )
    try:
        hf_raise_for_status(response)
    except hf.HfHubHTTPError as err:
        refused = err
    with pytest.raises(SourceError, match="refused to list datasets"):
        list(HubSource(ReplayHub(listing_error=refused)))


def test_losing_the_network_mid_run_stops_with_a_source_error() -> None:
    lost = hf.LocalEntryNotFoundError("cannot find the requested files in the local cache")
    items = iter(HubSource(ReplayHub(download_error=lost)))
    with pytest.raises(SourceError, match="offline mode"):
        next(items)


@pytest.mark.skipif(
    not constants.HF_HUB_OFFLINE,
    reason="needs HF_HUB_OFFLINE=1 at import, else the real Hub would be called",
)
def test_the_real_hf_api_offline_fails_fast_with_a_source_error() -> None:
    start = time.perf_counter()
    with pytest.raises(SourceError, match="unset HF_HUB_OFFLINE"):
        list(HubSource(limit=3))
    assert time.perf_counter() - start < 5


def test_open_source_hub_builds_without_touching_the_network() -> None:
    source = open_source("hub", limit=2)
    assert source.describe() == "Hugging Face Hub datasets (first 2 units)"
