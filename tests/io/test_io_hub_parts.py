"""The Hub source's parts: ordered prefetch, near-copies, the capped HTTP client, the token."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from huggingface_hub import constants

from dynogen import api
from dynogen.io.hub import HubSource
from dynogen.io.hub_http import BodyTooLarge, HubHttp
from dynogen.io.hub_options import HubOptions
from dynogen.io.nearcopy import NEAR_COPY, NearCopies, skip_near_copies
from dynogen.io.prefetch import ordered_prefetch
from dynogen.io.shards import JsonlSource
from dynogen.io.sources import open_source
from dynogen.ratelimit import Limiter, RetryPolicy
from dynogen.testing.fake_hub import FakeHub, synthetic_hub
from dynogen.units import Field, Skipped, Unit
from tests.helpers import FIXTURES, wait_until

RECORDED = FIXTURES / "hub"


# --------------------------------------------------------------------- prefetch
class Job:
    def __init__(self, n: int, *, fail_at: int | None = None, list_fail_at: int | None = None,
                 seed: int = 0) -> None:
        self.n = n
        self.fail_at = fail_at
        self.list_fail_at = list_fail_at
        self.rng = random.Random(seed)
        self.started: list[int] = []
        self.closed = threading.Event()
        self.active = 0
        self.peak = 0

    async def items(self) -> AsyncIterator[int]:
        for i in range(self.n):
            if i == self.list_fail_at:
                raise RuntimeError("listing broke")
            yield i

    async def fetch(self, item: int) -> int:
        self.started.append(item)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            for _ in range(self.rng.randrange(4)):  # fetches end out of order (seeded)
                await asyncio.sleep(0)
            if item == self.fail_at:
                raise ValueError(f"fetch {item} broke")
            return item * 10
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        self.closed.set()


def test_prefetch_keeps_input_order_under_concurrency() -> None:
    job = Job(200)
    assert list(ordered_prefetch(job, window=16)) == [i * 10 for i in range(200)]
    assert 1 < job.peak <= 16 and job.closed.is_set()


def test_prefetch_runs_ahead_only_a_window_of_a_slow_consumer() -> None:
    job = Job(1000)
    it = ordered_prefetch(job, window=8, buffer=2)
    taken = [next(it) for _ in range(5)]
    assert taken == [0, 10, 20, 30, 40]
    # The consumer dawdles: the fetcher fills its window and the buffer (5 taken, 2
    # buffered, 8 in the window), then must stop there; each item taken lets one more start.
    wait_until(lambda: len(job.started) >= 5 + 2 + 8, "the fetcher to fill its window")
    for n in range(5, 25):
        assert len(job.started) <= n + 8 + 2 + 1, f"{len(job.started)} started, {n} taken"
        assert next(it) == n * 10
    it.close()
    assert job.closed.wait(5)


def test_prefetch_delivers_results_before_a_failure_then_raises() -> None:
    got: list[int] = []
    with pytest.raises(ValueError, match="fetch 7 broke"):
        for x in ordered_prefetch(Job(50, fail_at=7), window=4):
            got.append(x)
    assert got == [i * 10 for i in range(7)]
    got = []
    with pytest.raises(RuntimeError, match="listing broke"):
        for x in ordered_prefetch(Job(50, list_fail_at=20), window=4):
            got.append(x)
    assert got == [i * 10 for i in range(20)]


# ------------------------------------------------------------------ near-copies
FIELDS = (Field("text", "string"), Field("label", "class_label", ("neg", "pos")))


def test_near_copies_under_another_name_are_skipped_once_and_counted() -> None:
    units: list[Unit | Skipped] = [
        Unit("org/reviews", "default", "Movie reviews, labelled by **sentiment**.", FIELDS),
        Unit("mirror/reviews-copy", "default", "movie reviews labelled by sentiment", FIELDS),
        Unit("other/reviews", "default", "Movie reviews, labelled by sentiment.",
             (Field("text", "string"), Field("label", "class_label", ("bad", "good")))),
        Unit("org/multi", "en", "Same card.", FIELDS),
        Unit("org/multi", "fr", "Same card.", FIELDS),  # two configs of one dataset: not copies
        Unit("a/nocard", "default", "", FIELDS),
        Unit("b/nocard", "default", "", FIELDS),  # no text to compare: never merged
        Skipped("x/broken", "", "invalid_metadata"),
    ]
    out = list(skip_near_copies(units))
    assert len(out) == len(units)
    skipped = [(i.dataset, i.detail) for i in out
               if isinstance(i, Skipped) and i.reason == NEAR_COPY]
    assert skipped == [("mirror/reviews-copy",
                        "same features and card text as org/reviews::default; processed once")]
    seen = NearCopies()
    assert [seen.check(u) for u in units if isinstance(u, Unit)].count(None) == 6


# ---------------------------------------------------------------- capped HTTP
async def test_a_body_over_the_cap_is_refused_while_streaming() -> None:
    sent = {"bytes": 0}

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await resp.prepare(request)
        try:
            for _ in range(2000):
                await resp.write(b"x" * 65536)
                sent["bytes"] += 65536
        except (ConnectionError, RuntimeError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/big", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    http = HubHttp(Limiter(max_in_flight=2), retry=RetryPolicy(max_retries=0), max_body=1_000_000)
    try:
        with pytest.raises(BodyTooLarge):
            await http.get(f"http://127.0.0.1:{port}/big")
    finally:
        await http.aclose()
        await runner.cleanup()
    assert sent["bytes"] < 2000 * 65536  # the sender was cut off, not read to the end


async def test_an_answer_says_the_last_url_on_the_asked_host_it_came_from() -> None:
    # an API link to a file -> its /resolve/ URL -> a CDN's signed URL (another host)
    async def api(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/datasets/o/a/resolve/refs%2Fconvert%2Fparquet/c/s/0000.parquet")

    async def resolve(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/signed?sig=secret")

    async def signed(request: web.Request) -> web.Response:
        return web.Response(body=b"data")

    app = web.Application()
    app.router.add_get("/api/f", api)
    app.router.add_get("/datasets/{tail:.+}", resolve)
    app.router.add_get("/signed", signed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    http = HubHttp(Limiter(max_in_flight=2), retry=RetryPolicy(max_retries=0))
    try:
        answer = await http.get(f"{base}/api/f")
        plain = await http.get(f"{base}/signed")
    finally:
        await http.aclose()
        await runner.cleanup()
    assert answer.body == b"data"
    assert answer.url == f"{base}/datasets/o/a/resolve/refs%2Fconvert%2Fparquet/c/s/0000.parquet"
    assert plain.url == f"{base}/signed"


# --------------------------------------------------------- token, collect, replay
CANARY = "hf_canaryTOKEN0123456789abcdefCANARY"


def test_hf_token_is_sent_and_never_written(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", CANARY)
    fake = FakeHub.from_recorded(RECORDED)
    del fake.file_errors["someone/flaky/README.md"]  # default backoff on a lasting 502 is slow
    out = tmp_path / "shards"
    with fake.running() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        hub = HubOptions(viewer_url=server.viewer_url, rpm=None)
        stats = api.collect("hub", out, hub=hub, shard_size=4)
        source = HubSource(options=hub)
        text = source.describe() + repr(source.options)
    # sent to the listing (huggingface_hub), the cards and the viewer alike
    assert fake.requests and all(r.authorized for r in fake.requests)
    assert len({r.bearer_sha for r in fake.requests}) == 1
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert CANARY.encode() not in written and CANARY not in text
    assert stats.total >= len(fake.listing)
    # the snapshot replays offline: the same units and counted skips, in order
    assert isinstance(open_source(str(out)), JsonlSource)  # source.json beside the shards
    replayed = list(JsonlSource(out))
    assert len(replayed) == stats.total
    assert (out / "source.json").is_file()
    listed = [r for r in replayed if isinstance(r, Unit)]
    assert listed and listed[0].samples  # rows from the viewer are in the snapshot


def test_cli_collect_from_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dynogen.cli.main import app

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    fake, expected = synthetic_hub(40, seed=3)
    with fake.running() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        result = CliRunner().invoke(app, [
            "collect", "--source", "hub", "--out", str(tmp_path / "s"),
            "--hub-viewer-url", server.viewer_url, "--hub-datasets", "25",
            "--hub-sort", "downloads", "--hub-concurrency", "3", "--hub-rpm", "100000",
        ])
    assert result.exit_code == 0, result.output
    datasets = {i.dataset for i in JsonlSource(tmp_path / "s")}
    assert len(datasets) == 25 and datasets <= set(expected)
    assert fake.peak_in_flight <= 3  # listing pages count against the same limiter


# ------------------------------------------------------------- viewer answers
def test_viewer_answers_and_errors_map_to_reasons() -> None:
    from dynogen.io.hub_http import HubHTTPError
    from dynogen.io.hub_viewer import infos_from_info, pick_split, preview_ok, viewer_skip

    assert preview_ok({"preview": True, "viewer": False}) and not preview_ok({"preview": False})
    one = {"dataset_info": {"config_name": "en", "features": {"a": {}}, "splits": {}}}
    assert list(infos_from_info(one)) == ["en"]  # a config-level answer
    with pytest.raises(ValueError, match="dataset_info"):
        infos_from_info({"error": "nope"})
    assert pick_split(["test", "validation"]) == "validation" and pick_split([]) is None
    script = HubHTTPError(501, "DatasetWithScriptNotSupportedError", "viewer /info: scripts")
    assert viewer_skip(script)[0] == "script_only"
    assert viewer_skip(HubHTTPError(404, "ResponseNotFound", "x"))[0] == "viewer_invalid"
    assert viewer_skip(HubHTTPError(500, "ConfigNamesError", "x"))[0] == "viewer_invalid"
    assert viewer_skip(HubHTTPError(503, "", "x"))[0] == "hub_error"
