"""The Hub row reader against the fake Hub over real HTTP: which path, what rows, what limits.

- Parquet ranges for a split's first rows (the footer, then the row groups
  needed), viewer pages when one page is enough, the API listing for a partial
  conversion; rows typed by the features and ClassLabel names kept.
- Concurrent reads stay within every bucket's quota (a fake clock drives the
  windows, the limiters and the retries: no sleeping).
- 429/503 with Retry-After are retried; what stays broken is transient
  (``retryable``); missing and gated datasets are final; a token with access reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from huggingface_hub import constants

from dynogen.config import Secret
from dynogen.instances.render import render_value
from dynogen.io.hub_buckets import HubBuckets, parse_hub_rate_limit
from dynogen.io.hub_http import HubHttp
from dynogen.io.hub_parquet import SparseFile
from dynogen.io.hub_rows import HubRowReader, MediaCell
from dynogen.io.rows import RowsReason, RowsUnavailable
from dynogen.ratelimit import FakeClock, RetryPolicy
from dynogen.testing.fake_hub import FakeHub, HubServer, serve_hub
from tests.helpers import run_clocked

FEATURES = {"text": {"dtype": "string", "_type": "Value"},
            "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}


def rows(n: int, tag: str = "", width: int = 0) -> list[dict[str, Any]]:
    pad = "x" * width
    return [{"text": f"{tag} row {j} {pad}".strip(), "label": j % 2} for j in range(n)]


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


async def served(fake: FakeHub) -> AsyncIterator[HubServer]:
    async with serve_hub(fake) as server:
        yield server


def reader(server: HubServer, **kw: Any) -> HubRowReader:
    return HubRowReader.open(endpoint=server.url, viewer_url=server.viewer_url,
                             **{"rpm": None, **kw})


# ------------------------------------------------------------------------- paths
async def test_parquet_ranges_for_a_split_and_one_viewer_page_for_a_small_need() -> None:
    fake = FakeHub()
    fake.add_rows("org/a", "default", "train", rows(500, "a"), FEATURES, row_group_size=50)
    fake.add_rows("org/a", "default", "test", rows(30, "t"), FEATURES)
    async with serve_hub(fake) as server:
        r = reader(server)
        try:
            got = await r.read("org/a", "default", splits=("train", "test"), rows_per_split=200)
            assert got.via == "parquet"
            assert got.info.splits == ("train", "test")
            assert got.info.labels == {"label": ("neg", "pos")}
            assert [s for s, _ in got].count("train") == 200 and len(got) == 230
            assert got.rows[0] == ("train", {"text": "a row 0", "label": 0})
            assert got.rows[-1] == ("test", {"text": "t row 29", "label": 1})
            # a small file comes whole with its footer: one ranged call a split, no listing
            assert [q.path.rsplit("/", 2)[-2] for q in fake.requests] == ["train", "test"]
            assert fake.statuses == {206: 2}

            fake.requests.clear()
            few = await r.read("org/a", "default", splits=("train",), rows_per_split=60)
            assert few.via == "viewer" and len(few) == 60
            assert few.rows[59] == ("train", {"text": "a row 59", "label": 1})
            assert [q.path for q in fake.requests] == ["/viewer/rows"]
            assert render_value(few.rows[1][1]["label"], "label", few.info.labels["label"]) == "pos"
        finally:
            await r.aclose()


async def test_a_large_file_is_read_by_footer_then_only_the_row_groups_needed() -> None:
    fake = FakeHub()
    fake.add_rows("org/big", "default", "train", rows(20_000, "b", width=300), FEATURES,
                  row_group_size=100)
    async with serve_hub(fake) as server:
        r = reader(server)
        try:
            got = await r.read("org/big", "default", splits=("train",), rows_per_split=150)
        finally:
            await r.aclose()
    assert len(got) == 150 and got.rows[149][1]["text"].startswith("b row 149 ")
    size = len(fake.data.parquet("org/big", "default/train/0000.parquet") or b"")
    assert size > 2 * 256 * 1024 and fake.statuses == {206: 2}
    tail, groups = (q.range for q in fake.requests)  # the footer, then two row groups
    assert tail == "bytes=-262144"
    first, last = (int(x) for x in groups.removeprefix("bytes=").split("-"))
    assert first == 4 and last - first < 3 * (size // 200)  # 2 of 200 row groups, about


async def test_a_footer_longer_than_the_first_read_and_row_groups_that_run_into_it() -> None:
    # the first read (tail_bytes) holds part of the footer: the rest is fetched and read
    # across both; the row groups wanted run on into the tail: what the tail has is used
    fake = FakeHub()
    fake.add_rows("org/w", "default", "train", rows(400, "w", width=50), FEATURES,
                  row_group_size=10)
    async with serve_hub(fake) as server:
        for tail in (1_000, 20_000):
            r = HubRowReader.open(endpoint=server.url, viewer_url=None, rpm=None, tail_bytes=tail)
            try:
                got = await r.read("org/w", "default", splits=("train",), rows_per_split=1000)
            finally:
                await r.aclose()
            assert len(got) == 400 and got.rows[399][1]["text"].startswith("w row 399 ")


def test_a_sparse_file_reads_across_adjacent_and_overlapping_parts() -> None:
    blob = SparseFile(10, [(6, b"6789"), (0, b"012"), (2, b"2345")])
    blob.seek(1)
    assert blob.read(8) == b"12345678"
    blob.seek(0)
    assert blob.read(10) == b"0123456789"
    gap = SparseFile(10, [(0, b"012"), (5, b"56789")])
    with pytest.raises(OSError, match="bytes 3-6 were not fetched"):
        gap.seek(1)
        gap.read(5)


async def test_a_partial_conversion_is_found_through_the_api_listing_and_its_shards() -> None:
    fake = FakeHub()
    fake.add_rows("org/p", "default", "train", rows(300, "p"), FEATURES, partial=True,
                  shard_rows=120)
    async with serve_hub(fake) as server:
        r = reader(server)
        try:
            got = await r.read("org/p", "default", splits=None, rows_per_split=200)
        finally:
            await r.aclose()
    assert len(got) == 200 and got.rows[199] == ("train", {"text": "p row 199", "label": 1})
    paths = [q.path for q in fake.requests]
    assert paths[0] == "/api/datasets/org/p/parquet/default"  # no split given: listed once
    assert sum("partial-train/000" in p for p in paths) == 2  # two shards of 120 rows


async def test_viewer_pages_are_typed_media_is_not_text_and_cut_cells_fall_back() -> None:
    fake = FakeHub()
    features = {**FEATURES, "n": {"dtype": "int32", "_type": "Value"},
                "picture": {"_type": "Image"}}
    data = [{"text": f"t{j}", "label": j % 2, "n": j, "picture": None} for j in range(10)]
    fake.add_rows("org/m", "default", "train", data, features)
    fake.add_rows("org/long", "default", "train", rows(5, "long", width=500), FEATURES)
    fake.data.cell_limit = 100
    async with serve_hub(fake) as server:
        r = reader(server)
        try:
            got = await r.read("org/m", "default", splits=("train",), rows_per_split=10)
            cut = await r.read("org/long", "default", splits=("train",), rows_per_split=5)
        finally:
            await r.aclose()
    assert got.via == "viewer"
    assert isinstance(got.rows[3][1]["picture"], MediaCell) and got.rows[3][1]["n"] == 3
    assert render_value(got.rows[3][1]["picture"]) is None  # no text, as a decoded image
    # the viewer cut a cell: those rows come from Parquet, whole
    assert cut.via == "parquet" and len(cut.rows[0][1]["text"]) > 500


# ------------------------------------------------------------------- failures
async def test_missing_and_gated_are_final_and_a_token_with_access_reads() -> None:
    fake = FakeHub()
    fake.add_rows("org/g", "default", "train", rows(8, "g"), FEATURES)
    fake.gate("org/g", "hf_granted")
    async with serve_hub(fake) as server:
        anon, granted, other = (reader(server), reader(server, token=Secret("hf_granted")),
                                reader(server, token=Secret("hf_other")))
        try:
            for r in (anon, other):
                with pytest.raises(RowsUnavailable) as e:
                    await r.read("org/g", "default", splits=("train",), rows_per_split=200)
                assert e.value.reason == RowsReason.GATED and not e.value.retryable
            with pytest.raises(RowsUnavailable) as e:
                await anon.read("org/none", "default", splits=("train",), rows_per_split=200)
            assert e.value.reason == RowsReason.NOT_FOUND and not e.value.retryable
            with pytest.raises(RowsUnavailable) as e:
                await granted.read("org/g", "nope", splits=("train",), rows_per_split=200)
            assert e.value.reason == RowsReason.CONFIG_NOT_FOUND
            got = await granted.read("org/g", "default", splits=("train",), rows_per_split=200)
            assert len(got) == 8
        finally:
            for r in (anon, granted, other):
                await r.aclose()
    statuses = {(q.path.split("/")[1], q.authorized) for q in fake.requests}
    assert ("datasets", True) in statuses and ("datasets", False) in statuses


async def test_429_and_503_are_retried_after_retry_after_then_transient_is_retryable() -> None:
    clock = FakeClock()
    fake = FakeHub()
    fake.add_rows("org/ok", "default", "train", rows(3), FEATURES)
    fake.add_rows("org/down", "default", "train", rows(3), FEATURES)
    fake.transient["convert/parquet/default/train/0000.parquet|org/ok"] = [429, 503]
    fake.transient["convert/parquet/default/train/0000.parquet|org/down"] = [503] * 9
    async with serve_hub(fake) as server:
        http = HubHttp(HubBuckets(rpm=None, concurrency=4, clock=clock),
                       retry=RetryPolicy(max_retries=3, base=1.0, cap=8.0), clock=clock)
        r = HubRowReader(http, endpoint=server.url, viewer_url=None)
        try:
            got = await run_clocked(clock, r.read("org/ok", "default", splits=("train",),
                                                  rows_per_split=200),
                                    lambda: http.stats.in_flight == 0)
            assert len(got) == 3 and http.stats.retries == 2
            with pytest.raises(RowsUnavailable) as e:
                await run_clocked(clock, r.read("org/down", "default", splits=("train",),
                                                rows_per_split=200),
                                  lambda: http.stats.in_flight == 0)
        finally:
            await r.aclose()
    assert e.value.reason == RowsReason.SERVER_ERROR and e.value.retryable
    assert http.buckets.snapshot()["resolvers"]["refused_429"] == 1


async def test_concurrent_reads_stay_within_every_buckets_quota() -> None:
    clock = FakeClock()
    fake = FakeHub()
    for i in range(30):
        fake.add_rows(f"org/s{i}", "default", "train", rows(150, f"s{i}"), FEATURES)
    for i in range(30):
        fake.add_rows(f"org/v{i}", "default", "train", rows(50, f"v{i}"), FEATURES)
    # the Hub's windows, read on the test's clock: 12 resolves and 7 pages a minute
    fake.limits.clock = clock.now
    fake.limits.quotas = {"resolvers": (12, 60.0), "viewer": (7, 60.0), "api": (5, 60.0)}
    async with serve_hub(fake) as server:
        http = HubHttp(HubBuckets(rpm=None, concurrency=8, clock=clock,
                                  viewer_url=server.viewer_url),
                       retry=RetryPolicy(max_retries=2, base=1.0, cap=4.0), clock=clock)
        r = HubRowReader(http, endpoint=server.url, viewer_url=server.viewer_url)

        async def everything() -> list[int]:
            reads = [r.read(f"org/{k}{i}", "default", splits=("train",), rows_per_split=n)
                     for k, n in (("s", 150), ("v", 50)) for i in range(30)]
            return [len(x) for x in await asyncio.gather(*reads)]

        try:
            sizes = await run_clocked(clock, everything(),
                                      lambda: http.stats.in_flight == 0 and fake.in_flight == 0)
        finally:
            await r.aclose()
    assert sizes == [150] * 30 + [50] * 30
    assert http.stats.peak_in_flight > 1  # reads did run at once
    assert fake.limits.refused == {}  # not one call over a quota
    assert fake.limits.peak("resolvers") == 12 and fake.limits.peak("viewer") == 7
    assert clock.now() >= 4 * 60  # 60 calls at 12 and 7 a minute: the windows were waited out
    snap = http.buckets.snapshot()
    assert snap["resolvers"]["quota"] == 12 and snap["viewer"]["rpm"] == 7.0


# ------------------------------------------------------------------- pure parts
def test_rate_limit_headers_parse_as_the_hub_sends_them() -> None:
    info = parse_hub_rate_limit({"ratelimit": '"resolvers";r=4999;t=299',
                                 "ratelimit-policy": '"fixed window";"resolvers";q=5000;w=300'})
    assert info is not None
    assert (info.bucket, info.remaining, info.reset, info.quota, info.window) == (
        "resolvers", 4999, 299.0, 5000, 300.0)
    assert parse_hub_rate_limit({"content-type": "text/plain"}) is None


async def test_a_spent_window_holds_a_bucket_until_it_ends_and_others_go_on() -> None:
    clock = FakeClock()
    buckets = HubBuckets(rpm=None, concurrency=4, clock=clock)
    permit = await buckets.acquire("api")
    buckets.observe("api", {"RateLimit": '"api";r=0;t=30'})
    buckets.release("api", permit)
    waiting = asyncio.ensure_future(buckets.acquire("api"))
    other = await buckets.acquire("resolvers")  # another bucket is not held
    buckets.release("resolvers", other)
    await clock.advance(29)
    assert not waiting.done()
    await clock.advance(1)
    await asyncio.sleep(0)
    buckets.release("api", await waiting)
    assert clock.now() == 30
