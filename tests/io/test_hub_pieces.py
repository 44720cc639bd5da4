"""A Hub dataset's conversion read piece by piece equals it read whole, against the fake Hub.

Real HTTP to the fake Hub, several Parquet files a split and several row groups a file:

- the rows of all pieces, in order, are ``HubRowReader.read``'s (Parquet) rows for a
  cap inside a file, inside a row group, and for every row; the same ``RowsInfo``;
  each row's order key ``(split_index, file_index, first_row + i)`` is its place;
- pieces hold at most ``piece_bytes`` / ``piece_rows``; a piece's bytes come in ranged
  calls of at most ``max_range_bytes``; a footer handed over saves the worker its call;
  a worker's calls go to the file's ``/resolve/`` URL (the resolvers bucket);
- failures are ``read``'s: gated, not found, no config, no split, no allowed split, no
  conversion, offline, a listed file gone, a file changed since the plan, and a 503 that
  stays (``retryable``; a fake clock drives the retries: no sleeping).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from huggingface_hub import constants

from dynogen.config import Secret
from dynogen.io.hub_buckets import HubBuckets
from dynogen.io.hub_http import HubHttp
from dynogen.io.hub_parquet import MediaCell, ParquetFooter, byte_span
from dynogen.io.hub_pieces import plan_hub_pieces, read_hub_piece
from dynogen.io.hub_rows import HubRowReader, environment_token
from dynogen.io.row_files import Piece
from dynogen.io.rows import RowsInfo, RowsReason, RowsUnavailable
from dynogen.ratelimit import FakeClock, RetryPolicy
from dynogen.testing.fake_hub import FakeHub, HubServer, serve_hub
from tests.helpers import run_clocked

FEATURES = {"text": {"dtype": "string", "_type": "Value"},
            "label": {"names": ["neg", "pos"], "_type": "ClassLabel"},
            "n": {"dtype": "int32", "_type": "Value"},
            "picture": {"_type": "Image"}}
SHARD, GROUP = 300, 25  # rows per Parquet file, rows per row group
TRAIN, TEST = 1000, 650  # files of 300, 300, 300, 100 rows; and of 300, 300, 50


def rows(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"text": f"{tag} row {j}", "label": j % 2, "n": j,
             "picture": {"bytes": b"\x89PNG", "path": None} if j % 3 == 0 else None}
            for j in range(n)]


def multi_file_hub() -> FakeHub:
    fake = FakeHub()
    for split, n in (("train", TRAIN), ("test", TEST)):
        fake.add_rows("org/multi", "default", split, rows(n, split), FEATURES,
                      row_group_size=GROUP, shard_rows=SHARD)
    return fake


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield


def reader(server: HubServer, **kw: Any) -> HubRowReader:
    return HubRowReader.open(endpoint=server.url, viewer_url=server.viewer_url,
                             **{"rpm": None, **kw})


async def pieces_rows(r: HubRowReader, pieces: list[Piece], *,
                      footers: dict[str, ParquetFooter] | None = None
                      ) -> list[tuple[str, dict[str, Any]]]:
    """Every piece read apart, as a worker does: from its dict, with a JSON round trip."""
    out = []
    for piece in pieces:
        again = Piece.from_dict(orjson.loads(orjson.dumps(piece.to_dict())))
        assert again == piece
        footer = None
        if footers is not None:
            footer = ParquetFooter.from_dict(orjson.loads(orjson.dumps(
                footers[piece.path].to_dict())))
        out += [(again.split, row) for row in await read_hub_piece(r, again, footer=footer)]
    return out


def same_info(a: RowsInfo, b: RowsInfo) -> None:
    assert (a.splits, a.missing_splits, a.columns, dict(a.labels)) == \
        (b.splits, b.missing_splits, b.columns, dict(b.labels))
    assert a.features == b.features


# ------------------------------------------------------------------------ equality
@pytest.mark.parametrize("n", [160, 730, sys.maxsize, None])
async def test_the_pieces_in_order_are_the_rows_read_whole(n: int | None) -> None:
    # 160: inside the first file, inside a row group; 730: inside the third file, inside a
    # row group (and all of test's 650); sys.maxsize and None: every row of every file
    fake = multi_file_hub()
    async with serve_hub(fake) as server:
        r = reader(server)
        by_name = HubRowReader.open(endpoint=server.url, viewer_url=server.viewer_url, rpm=None,
                                    next_shard_bytes=1)  # the fake's small files are not last
        try:
            whole = await r.read("org/multi", "default", rows_per_split=n or sys.maxsize)
            named = await by_name.read("org/multi", "default", splits=("test", "train"),
                                       rows_per_split=n or sys.maxsize)
            info, pieces = await plan_hub_pieces(r, "org/multi", "default", splits=None,
                                                 allow=None, limit=n, piece_rows=60)
            info2, pieces2 = await plan_hub_pieces(r, "org/multi", None,
                                                   splits=("test", "train"), allow=None,
                                                   limit=n, piece_rows=60)
            got = await pieces_rows(r, pieces)
            got2 = await pieces_rows(r, pieces2)
        finally:
            await r.aclose()
            await by_name.aclose()
    assert whole.via == named.via == "parquet"
    wanted = min(n or sys.maxsize, TRAIN) + min(n or sys.maxsize, TEST)
    assert len(got) == len(whole) == wanted and got == list(whole.rows)
    assert got2 == list(named.rows) and info2.splits == ("test", "train")
    same_info(info, whole.info)
    same_info(info2, named.info)
    assert info.labels == {"label": ("neg", "pos")}
    second = dict(got[1][1])
    assert isinstance(second.pop("picture"), MediaCell)  # media (or none): no text, as read
    assert second == {"text": "train row 1", "label": 1, "n": 1}

    # each row's order key is its place: split, file, row in the file
    keys = []
    for p in pieces:
        take = p.limit if p.limit is not None else p.rows
        assert p.rows is not None and take is not None and 0 < take <= p.rows <= 60
        assert len(p.row_groups) == p.rows // GROUP + (p.rows % GROUP > 0)
        assert p.first_row == p.row_groups[0] * GROUP
        assert "/resolve/" in p.path and p.path.endswith(f"/{p.file_index:04d}.parquet")
        keys += [(p.split_index, p.file_index, p.first_row + i) for i in range(take)]
    assert keys == sorted(set(keys))
    for (s, f, i), (split, row) in zip(keys, got, strict=True):
        assert info.splits[s] == split and row["n"] == f * SHARD + i
    # the cap cuts a row group: the last piece of each capped split carries what to take
    cuts = {160: [10, 10], 730: [30]}.get(n or 0, [])  # pieces of 2 row groups, 50 rows
    assert [p.limit for p in pieces if p.limit is not None] == cuts


async def test_pieces_are_cut_by_compressed_bytes_and_read_in_ranges_of_max_range_bytes(
        ) -> None:
    fake = multi_file_hub()
    data = fake.data.parquet("org/multi", "default/train/0000.parquet")
    assert data is not None
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.read_metadata(pa.BufferReader(data))
    group = max(hi - lo for lo, hi in (byte_span(meta, [g]) for g in range(meta.num_row_groups)))
    footer = int.from_bytes(data[-8:-4], "little") + 8
    async with serve_hub(fake) as server:
        r = reader(server)
        # a first read of the footer and a few row groups, and ranges of half a row group
        small = reader(server, tail_bytes=footer + 2 * group, max_range_bytes=group // 2)
        try:
            whole = await r.read("org/multi", "default", rows_per_split=800,
                                 allow=lambda s: s == "train")
            info, pieces = await plan_hub_pieces(r, "org/multi", "default", splits=("train",),
                                                 allow=None, limit=800, piece_bytes=3 * group)
            fake.requests.clear()
            got = await pieces_rows(small, pieces)
        finally:
            await r.aclose()
            await small.aclose()
    assert got == list(whole.rows)
    assert len(pieces) > 3 and max(len(p.row_groups) for p in pieces) > 1
    for p in pieces:
        lo, hi = byte_span(meta, list(p.row_groups))
        assert hi - lo <= 3 * group
    ranges = [q.range for q in fake.requests]
    spans = [[int(x) for x in q.removeprefix("bytes=").split("-")] for q in ranges
             if not q.startswith("bytes=-")]
    assert spans and all(b - a + 1 <= group // 2 for a, b in spans)
    assert len(spans) > 2 * len(pieces)  # pieces took several calls
    assert all(q.path.startswith("/datasets/org/multi/resolve/") for q in fake.requests)


async def test_a_footer_handed_over_saves_the_worker_its_call() -> None:
    fake = multi_file_hub()
    async with serve_hub(fake) as server:
        r = reader(server, tail_bytes=4096)
        try:
            whole = await r.read("org/multi", "default", rows_per_split=sys.maxsize)
            footers: dict[str, ParquetFooter] = {}
            _, pieces = await plan_hub_pieces(r, "org/multi", "default", splits=None,
                                              allow=None, limit=None, footers=footers)
            fake.requests.clear()
            got = await pieces_rows(r, pieces, footers=footers)
        finally:
            await r.aclose()
    assert got == list(whole.rows)
    assert sorted(footers) == sorted({p.path for p in pieces}) and len(footers) == 7
    assert fake.requests and not any(q.range.startswith("bytes=-") for q in fake.requests)
    for footer in footers.values():  # a planner holds the footer's bytes, not the tail's
        assert sum(len(b) for _, b in footer.parts) == footer.length + 8


async def test_a_cap_of_none_and_of_zero_and_the_split_policy() -> None:
    fake = multi_file_hub()
    async with serve_hub(fake) as server:
        r = reader(server)
        try:
            info, pieces = await plan_hub_pieces(r, "org/multi", "default", splits=None,
                                                 allow=lambda s: s != "test", limit=0)
            fake.requests.clear()
            info3, pieces3 = await plan_hub_pieces(r, "org/multi", "default",
                                                   splits=("nope", "train"), allow=None,
                                                   limit=SHARD)
        finally:
            await r.aclose()
    assert info.splits == ("train",) and pieces == [] and info.features is None
    assert info3.splits == ("train",) and info3.missing_splits == ("nope",)
    assert [p.file_index for p in pieces3] == [0]  # the first file held the cap: no other
    links = "/api/datasets/org/multi/parquet/default/"  # the listing's links to files
    asked = [q.path for q in fake.requests if q.path.startswith(links)]
    assert asked == [links + "train/0.parquet"]


def test_workers_read_their_pieces_in_asyncio_run_each_with_a_fresh_reader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # as the sharded build calls it: the driver plans on its loop, each worker reads a
    # piece from its JSON spec on a loop and a reader of its own (here: threads)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-dynogen-test")  # no stored login
    fake = multi_file_hub()
    with fake.running() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)

        async def plan() -> tuple[list[Piece], list[tuple[str, dict[str, Any]]]]:
            r = HubRowReader.open(rpm=None, token=environment_token())
            try:
                _, pieces = await plan_hub_pieces(r, "org/multi", "default", splits=None,
                                                  allow=None, limit=400, piece_rows=100)
                whole = await r.read("org/multi", "default", rows_per_split=400)
            finally:
                await r.aclose()
            return pieces, list(whole.rows)

        def work(spec: bytes) -> list[tuple[str, dict[str, Any]]]:
            async def read() -> list[tuple[str, dict[str, Any]]]:
                r = HubRowReader.open(rpm=None, concurrency=2, token=environment_token())
                try:
                    piece = Piece.from_dict(orjson.loads(spec))
                    return [(piece.split, row) for row in await read_hub_piece(r, piece)]
                finally:
                    await r.aclose()
            return asyncio.run(read())

        pieces, whole = asyncio.run(plan())
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(work, [orjson.dumps(p.to_dict()) for p in pieces]))
    assert len(pieces) == 8 and [row for rows in got for row in rows] == whole  # 3 + 1 a split


# ------------------------------------------------------------------------ failures
async def reasons(r: HubRowReader, dataset: str, config: str | None, **kw: Any
                  ) -> tuple[RowsUnavailable, RowsUnavailable]:
    """What planning and a whole read raise for the same unit."""
    with pytest.raises(RowsUnavailable) as planned:
        await plan_hub_pieces(r, dataset, config, **{"splits": None, "allow": None,
                                                     "limit": 200, **kw})
    read_kw = {"splits": kw.get("splits"), "allow": kw.get("allow")}
    with pytest.raises(RowsUnavailable) as whole:
        await r.read(dataset, config, rows_per_split=200, **read_kw)
    return planned.value, whole.value


async def test_final_failures_are_reads_reasons() -> None:
    fake = multi_file_hub()
    fake.add_rows("org/g", "default", "train", rows(40, "g"), FEATURES)
    fake.gate("org/g", "hf_granted")
    fake.listing.append({"id": "org/script", "siblings": []})  # a repo without a conversion
    async with serve_hub(fake) as server:
        anon, granted = reader(server), reader(server, token=Secret("hf_granted"))
        try:
            cases = [
                (anon, "org/g", "default", {}, RowsReason.GATED),
                (anon, "org/none", "default", {}, RowsReason.NOT_FOUND),
                (anon, "org/multi", "nope", {}, RowsReason.CONFIG_NOT_FOUND),
                (anon, "org/multi", None, {"splits": ("nope",)}, RowsReason.SPLIT_NOT_FOUND),
                (anon, "org/multi", None, {"allow": lambda s: False},
                 RowsReason.NO_TRAINING_SPLIT),
                (anon, "org/script", None, {}, RowsReason.NO_DATA_FILES),
            ]
            for r, dataset, config, kw, reason in cases:
                planned, whole = await reasons(r, dataset, config, **kw)
                assert planned.reason == whole.reason == reason, (dataset, config, kw)
                assert not planned.retryable
            # planned with access, read without: the piece is gated too
            info, pieces = await plan_hub_pieces(granted, "org/g", "default", splits=None,
                                                 allow=None, limit=None)
            assert len(await pieces_rows(granted, pieces)) == 40
            with pytest.raises(RowsUnavailable) as e:
                await read_hub_piece(anon, pieces[0])
            assert e.value.reason == RowsReason.GATED and not e.value.retryable
        finally:
            await anon.aclose()
            await granted.aclose()


async def test_offline_a_listed_file_gone_and_a_file_changed_since_the_plan(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = multi_file_hub()
    gone = "/api/datasets/org/multi/parquet/default/train/2.parquet"
    async with serve_hub(fake) as server:
        r = reader(server)
        try:
            # a listed file that is not there ends its split, as in a whole read
            fake.transient[gone] = [404]
            whole = await r.read("org/multi", "default", rows_per_split=sys.maxsize)
            fake.transient[gone] = [404]
            info, pieces = await plan_hub_pieces(r, "org/multi", "default", splits=None,
                                                 allow=None, limit=None)
            assert await pieces_rows(r, pieces) == list(whole.rows)
            assert len(whole) == 2 * SHARD + TEST and {p.file_index for p in pieces} == {0, 1, 2}
            # the conversion redone with other row groups: the plan no longer holds
            fake.add_rows("org/multi", "default", "train", rows(TRAIN, "train"), FEATURES,
                          row_group_size=40, shard_rows=SHARD)
            with pytest.raises(RowsUnavailable) as e:
                await read_hub_piece(r, pieces[0])
            assert e.value.reason == RowsReason.LOAD_ERROR and "changed" in e.value.detail
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
            for call in (plan_hub_pieces(r, "org/multi", "default", splits=None, allow=None,
                                         limit=None), read_hub_piece(r, pieces[0])):
                with pytest.raises(RowsUnavailable) as e:
                    await call
                assert e.value.reason == RowsReason.OFFLINE and e.value.retryable
        finally:
            await r.aclose()


async def test_a_503_that_stays_is_retryable_and_one_that_passes_is_retried() -> None:
    clock = FakeClock()
    fake = multi_file_hub()
    file0 = "convert/parquet/default/train/0000.parquet|org/multi"
    listing = "/api/datasets/org/multi/parquet/default"
    async with serve_hub(fake) as server:
        http = HubHttp(HubBuckets(rpm=None, concurrency=4, clock=clock),
                       retry=RetryPolicy(max_retries=3, base=1.0, cap=8.0), clock=clock)
        r = HubRowReader(http, endpoint=server.url, viewer_url=None)

        async def clocked(aw: Any) -> Any:
            return await run_clocked(clock, aw, lambda: http.stats.in_flight == 0)

        try:
            fake.transient[listing] = [503] * 9
            with pytest.raises(RowsUnavailable) as planned:
                await clocked(plan_hub_pieces(r, "org/multi", "default", splits=None,
                                              allow=None, limit=None))
            fake.transient[listing] = [503] * 9
            with pytest.raises(RowsUnavailable) as whole:
                await clocked(r.read("org/multi", "default", rows_per_split=sys.maxsize))
            assert planned.value.reason == whole.value.reason == RowsReason.SERVER_ERROR
            assert planned.value.retryable

            fake.transient.clear()
            fake.transient[file0] = [429, 503]  # a footer retried
            _, pieces = await clocked(plan_hub_pieces(r, "org/multi", "default",
                                                      splits=("train",), allow=None,
                                                      limit=GROUP))
            assert len(pieces) == 1 and http.stats.retries >= 2
            fake.transient[file0] = [503] * 9  # a worker's read that stays refused
            with pytest.raises(RowsUnavailable) as e:
                await clocked(read_hub_piece(r, pieces[0]))
            assert e.value.reason == RowsReason.SERVER_ERROR and e.value.retryable
            fake.transient.clear()
            assert len(await clocked(read_hub_piece(r, pieces[0]))) == GROUP
        finally:
            await r.aclose()
