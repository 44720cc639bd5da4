"""HubSource against a local fake of the Hub and the dataset viewer (tests/fixtures/hub).

The real ``huggingface_hub`` client lists datasets from the fake over HTTP;
cards and viewer answers come from it too. Answers are recorded in the Hub's
shapes (see tests/fixtures/hub/NOTICE.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants

from dynogen.errors import ConfigError, SourceError
from dynogen.io import hub as hub_module
from dynogen.io.hub import HubSource
from dynogen.io.hub_options import HubOptions, HubSkip, parse_since
from dynogen.io.sources import open_source
from dynogen.ratelimit import RetryPolicy
from dynogen.testing.fake_hub import FakeHub, HubServer
from dynogen.units import Skipped, SkipReason, Unit
from tests.helpers import FIXTURES, wait_until

RECORDED = FIXTURES / "hub"
FAST = RetryPolicy(max_retries=2, base=0.001, cap=0.002)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fake is local: lift offline mode for this test only; no stored token."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def recorded(online: None) -> Iterator[tuple[FakeHub, HubServer]]:
    fake = FakeHub.from_recorded(RECORDED)
    with fake.running() as server:
        yield fake, server


def fetchers() -> list[threading.Thread]:
    """The live threads of ordered_prefetch (one per Hub source being read)."""
    return [t for t in threading.enumerate() if t.name == "dynogen-prefetch"]


def source(server: HubServer, **options: Any) -> HubSource:
    opts = HubOptions(endpoint=server.url, viewer_url=server.viewer_url, rpm=None, **options)
    return HubSource(options=opts, retry=FAST)


def by_dataset(items: list[Unit | Skipped]) -> dict[str, list[Unit | Skipped]]:
    out: dict[str, list[Unit | Skipped]] = {}
    for item in items:
        out.setdefault(item.dataset, []).append(item)
    return out


def test_recorded_listing_gives_units_and_counted_skips(
    recorded: tuple[FakeHub, HubServer],
) -> None:
    fake, server = recorded
    src = source(server)
    got = by_dataset(list(src))
    assert list(got) == [d["id"] for d in fake.listing]  # listing order, nothing dropped

    cola, sst2 = got["nyu-mll/glue"]
    assert isinstance(cola, Unit) and isinstance(sst2, Unit)
    assert (cola.config, sst2.config) == ("cola", "sst2")
    assert cola.field("label").labels == ("unacceptable", "acceptable")  # type: ignore[union-attr]
    assert cola.data_ref == "nyu-mll/glue" and cola.origin == "hub"
    assert cola.splits == ("test", "train", "validation")
    assert cola.license == "cc-by-4.0"
    assert cola.description.startswith("GLUE, the General Language Understanding")
    # rows from /first-rows (train split) become the samples, as many as asked
    assert [r["sentence"] for r in cola.samples] == [
        "Our friends won't buy this analysis, let alone the next one we propose.",
        "One more pseudo generalization and I'm giving up.",
    ]
    assert sst2.samples[0]["label"] == 0

    (ag,) = got["fancyzhx/ag_news"]  # features from the viewer's /info
    assert isinstance(ag, Unit) and ag.config == "default"
    assert ag.field("label").labels == ("World", "Sports", "Business", "Sci/Tech")  # type: ignore[union-attr]
    assert ag.description.startswith("AG is a collection of more than 1 million news articles")
    assert ag.samples[0]["text"].startswith("Wall St. Bears Claw Back")

    def reasons(dataset: str) -> list[str]:
        return [i.reason for i in got[dataset] if isinstance(i, Skipped)]

    assert reasons("gated-org/secret-dialogues") == [HubSkip.GATED]
    assert reasons("someone/deleted-meanwhile") == [HubSkip.NOT_FOUND]
    assert reasons("someone/taken-down") == [HubSkip.DISABLED]
    assert reasons("someone/private-notes") == [HubSkip.PRIVATE]
    assert reasons("someone/legacy-script") == [HubSkip.SCRIPT_ONLY]  # from the listing
    assert reasons("someone/server-side-script") == [HubSkip.SCRIPT_ONLY]  # the viewer's 501
    assert reasons("someone/no-features") == [HubSkip.VIEWER_INVALID]
    assert reasons("someone/empty-repo") == [HubSkip.VIEWER_INVALID]
    assert reasons("someone/glue-mirror") == ["near_copy", "near_copy"]
    (flaky,) = got["someone/flaky"]
    assert isinstance(flaky, Skipped) and flaky.reason == HubSkip.HUB_ERROR
    assert "502" in flaky.detail
    (bad,) = got["someone/bad-card"]
    assert isinstance(bad, Skipped) and bad.reason == SkipReason.INVALID_METADATA
    assert "invalid YAML" in bad.detail

    stats = src.stats
    assert stats.listed == len(fake.listing)
    assert sum(stats.outcomes.values()) == sum(len(v) for v in got.values())
    assert stats.http.retries >= 2  # the 502s were retried before giving up


def test_only_needed_calls_are_made(recorded: tuple[FakeHub, HubServer]) -> None:
    fake, server = recorded
    list(source(server))
    paths = [r.path for r in fake.requests]
    queried = {q for r in fake.requests for q in r.query}
    # datasets skipped from the listing cost no call at all
    for quiet in ("gated-org/secret-dialogues", "someone/taken-down", "someone/private-notes",
                  "someone/legacy-script"):
        assert ("dataset", quiet) not in queried
        assert not [p for p in paths if quiet in p]
    # no data files, no dataset_infos.json: cards and viewer answers only
    assert not [p for p in paths if p.endswith((".parquet", "dataset_infos.json"))]
    # a card absent from the listing's siblings is never requested
    assert not [p for p in paths if p.startswith("/datasets/someone/empty-repo")]
    # a viewer-invalid dataset stops after /is-valid
    assert [r.path for r in fake.requests if ("dataset", "someone/no-features") in r.query] == [
        "/viewer/is-valid"
    ]
    first_rows = [dict(r.query) for r in fake.requests if r.path == "/viewer/first-rows"]
    assert {(q["dataset"], q["config"], q["split"]) for q in first_rows} >= {
        ("nyu-mll/glue", "cola", "train"), ("fancyzhx/ag_news", "default", "train")
    }
    (listing,) = [dict(r.query) for r in fake.requests if r.path == "/api/datasets"]
    assert listing["expand"]  # listing properties asked for in the one listing call


def test_listing_filters_reach_the_hub(recorded: tuple[FakeHub, HubServer]) -> None:
    fake, server = recorded
    src = source(server, search="glue", task_categories=("text-classification",),
                 sort="downloads", datasets=5, sample_rows=0)
    got = list(src)
    (call,) = [r for r in fake.requests if r.path == "/api/datasets"]
    query = list(call.query)
    assert ("search", "glue") in query and ("sort", "downloads") in query
    assert ("filter", "task_categories:text-classification") in query
    assert ("limit", "5") in query
    assert {i.dataset for i in got} == {"nyu-mll/glue", "someone/glue-mirror"}
    assert all(i.samples == () for i in got if isinstance(i, Unit))  # sample_rows=0: no rows
    assert not [r for r in fake.requests if r.path == "/viewer/first-rows"]
    assert "search='glue'" in src.describe() and "sort='downloads'" in src.describe()


def test_modified_since_stops_the_listing_at_the_first_older_dataset(online: None) -> None:
    fake = FakeHub.from_recorded(RECORDED)
    fake.page_size = 3
    with fake.running() as server:
        src = source(server, modified_since="2026-11-14")  # as grow passes it: an ISO string
        got = list(src)
    # sorted newest first: 2026-11-18 .. 2026-11-14 are listed, the rest never fetched
    assert [d for d in dict.fromkeys(i.dataset for i in got)] == [
        "gated-org/secret-dialogues", "someone/deleted-meanwhile", "someone/bad-card",
        "someone/taken-down", "someone/no-features",
    ]
    pages = [r for r in fake.requests if r.path == "/api/datasets"]
    assert ("sort", "lastModified") in pages[0].query
    assert len(pages) == 2  # of 5 pages: the listing stopped early


def test_modified_since_under_another_sort_counts_older_datasets(online: None) -> None:
    fake = FakeHub.from_recorded(RECORDED)
    with fake.running() as server:
        got = list(source(server, modified_since=parse_since("2026-11-14"), sort="downloads"))
    old = {i.dataset for i in got if isinstance(i, Skipped) and i.reason == HubSkip.NOT_MODIFIED}
    assert "nyu-mll/glue" in old and "someone/flaky" in old
    assert len({i.dataset for i in got}) == len(fake.listing)  # still every one accounted for


def test_transient_503_and_429_are_retried(online: None) -> None:
    fake = FakeHub.from_recorded(RECORDED)
    fake.transient = {"is-valid|nyu-mll/glue": [503, 503], "info|nyu-mll/glue": [429],
                      "README.md|nyu-mll/glue": [502]}
    with fake.running() as server:
        src = HubSource(options=HubOptions(endpoint=server.url, viewer_url=server.viewer_url,
                                           search="nyu-mll"),
                        retry=RetryPolicy(max_retries=3, base=0.001, cap=0.002))
        got = list(src)
    assert [i.config for i in got if isinstance(i, Unit)] == ["cola", "sst2"]
    assert src.stats.http.retries == 4
    assert src.stats.http.statuses[503] == 2 and src.stats.http.statuses[429] == 1


def test_an_oversized_card_is_refused_and_counted(online: None) -> None:
    fake = FakeHub.from_recorded(RECORDED)
    fake.files["nyu-mll/glue/README.md"] += "x" * 200_000
    with fake.running() as server:
        got = list(source(server, search="nyu-mll", max_body=100_000))
    (item,) = got
    assert isinstance(item, Skipped) and item.reason == HubSkip.TOO_LARGE


def test_closing_early_stops_fetching(recorded: tuple[FakeHub, HubServer]) -> None:
    fake, server = recorded
    list(source(server))
    full = len(fake.requests)
    fake.requests.clear()
    before = set(fetchers())
    items = iter(source(server, fetch_ahead=1))
    first = next(items)
    assert first.key == "nyu-mll/glue::cola"
    (fetcher,) = set(fetchers()) - before
    items.close()  # the consumer goes away (a --limit reached): the fetcher stops
    # Stopped, not paused: its thread has ended, so no request can follow; those it had
    # sent (one may still be arriving) are fewer than a full listing takes.
    wait_until(lambda: not fetcher.is_alive(), "the fetcher thread to end")
    assert len(fake.requests) < full


def test_an_unreachable_viewer_is_a_source_error(recorded: tuple[FakeHub, HubServer]) -> None:
    _, server = recorded
    src = HubSource(options=HubOptions(endpoint=server.url, viewer_url="http://127.0.0.1:9",
                                       rpm=None),
                    retry=FAST)
    with pytest.raises(SourceError, match="unreachable.*--source PATH"):
        list(src)


@pytest.mark.skipif(
    not constants.HF_HUB_OFFLINE,
    reason="needs HF_HUB_OFFLINE=1 at import, else the real Hub would be called",
)
def test_offline_mode_fails_fast_with_a_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fetch(*args: Any, **kw: Any) -> None:
        raise AssertionError("offline, yet the source started fetching")

    monkeypatch.setattr(hub_module, "ordered_prefetch", fetch)  # fast: before any request
    with pytest.raises(SourceError, match="unset HF_HUB_OFFLINE"):
        list(HubSource(datasets=3))


def test_open_source_hub_builds_without_touching_the_network() -> None:
    source = open_source("hub", limit=2)
    assert source.describe() == "Hugging Face Hub datasets (first 2 units)"
    hub = open_source("hub", hub=HubOptions(search="glue", datasets=10))
    assert "search='glue'" in hub.describe() and "datasets=10" in hub.describe()


def test_hub_options_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="--hub-sort"):
        HubOptions(sort="likes")
    with pytest.raises(ConfigError, match="ISO date"):
        parse_since("last tuesday")
    assert parse_since("2026-11-01").tzinfo is not None  # type: ignore[union-attr]
