"""The limiter, driven entirely by a FakeClock: no test sleeps for real."""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

import dynogen.ratelimit as ratelimit
from dynogen.errors import ConfigError, UserError
from dynogen.ratelimit import FakeClock, Limiter, Permit, RequestTooLarge, retry_after_seconds


def max_in_window(times: list[float], window: float, weights: list[int] | None = None) -> float:
    """Largest total in any half-open window [t, t + window) that starts at an event."""
    ws = weights if weights is not None else [1] * len(times)
    prefix = [0]
    for w in ws:
        prefix.append(prefix[-1] + w)
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + window)  # same arithmetic as the limiter: at + W
        best = max(best, prefix[j] - prefix[i])
    return best


def fits_bucket(times: list[float], capacity: float, rate: float,
                weights: list[int] | None = None) -> bool:
    """Whether a provider's bucket (``capacity``, refilled at ``rate``/s, starting full,
    admitting a cost when it holds ``min(cost, capacity)``) admits every event in time."""
    ws = weights if weights is not None else [1] * len(times)
    level, last = float(capacity), times[0] if times else 0.0
    for t, w in zip(times, ws, strict=True):
        level = min(capacity, level + (t - last) * rate)
        last = t
        if level < min(w, capacity) - 1e-6:
            return False
        level -= w
    return True


async def grant_times(limiter: Limiter, clock: FakeClock, n: int, tokens: int = 0,
                      used: int | None = None, hold: float = 0.0) -> list[float]:
    """Send ``n`` requests through ``limiter`` from 8 workers; return the grant times."""
    times: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            p = await limiter.acquire(tokens)
            times.append(clock.now())
            if hold:
                await clock.sleep(hold)
            limiter.release(p, used)

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(8)))

    await clock.run(main())
    return sorted(times)


# ----------------------------------------------------------------------- pacing
async def test_rpm_paces_a_second_at_a_time_from_the_first_second() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, clock=clock)
    times = await grant_times(limiter, clock, 100)
    assert times[:10] == [0.0] * 10  # full speed at once: no slow start
    assert times[-1] == pytest.approx(9.0)  # 100 requests at 10/s
    assert fits_bucket(times, 10, 10.0)  # the server's own bucket: never a 429
    assert not fits_bucket(times, 9, 10.0)  # ...and its whole burst used
    assert limiter.snapshot()["burst_requests"] == 10


async def test_burst_seconds_shapes_the_burst() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, burst_seconds=0.2, clock=clock)
    times = await grant_times(limiter, clock, 40)
    assert fits_bucket(times, 2, 10.0) and not fits_bucket(times, 1, 10.0)
    assert times[-1] == pytest.approx(3.8)  # still 10/s


async def test_fractional_rate_keeps_the_full_rate() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=90, clock=clock)  # 1.5/s: a burst of 1 every 2/3 s
    times = await grant_times(limiter, clock, 91)
    assert times[89] < 60.0 <= times[90]
    assert max_in_window(times, 60.0) == 90


async def test_sixty_second_window_is_never_exceeded() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=120, burst_seconds=30, clock=clock)  # a burst of 60
    times = await grant_times(limiter, clock, 300)
    assert max_in_window(times, 60.0) == 120
    assert fits_bucket(times, 60, 2.0)


async def test_tpm_binds_when_tokens_run_out_first() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=10_000, tpm=6000, clock=clock)  # 100 tokens/s
    times = await grant_times(limiter, clock, 40, tokens=50, used=50)
    assert times[-1] == pytest.approx(19.0)  # two 50-token requests per second
    # A token bucket (as providers enforce it): any 1 s holds at most a full bucket
    # plus one second of refill.
    assert max_in_window(times, 1.0, [50] * 40) <= 100 + 100


async def test_request_bigger_than_the_burst_goes_alone() -> None:
    clock = FakeClock()
    limiter = Limiter(tpm=6000, clock=clock)  # burst: 100 tokens per second
    times = await grant_times(limiter, clock, 5, tokens=500, used=500)
    # Each goes when the bucket is full again and leaves it 400 in debt: 500 tokens
    # per 5 s is exactly the 6,000 a minute.
    assert times == pytest.approx([0.0, 5.0, 10.0, 15.0, 20.0])


async def test_unlimited_only_caps_in_flight() -> None:
    clock = FakeClock()
    limiter = Limiter(max_in_flight=2, clock=clock)
    held = [await limiter.acquire(10**9) for _ in range(2)]
    third = asyncio.ensure_future(limiter.acquire(1))
    await clock.advance(100)
    assert not third.done() and limiter.in_flight == 2 and limiter.waiting == 1
    limiter.release(held[0])
    await clock.advance(0)
    assert third.done() and limiter.in_flight == 2
    assert limiter.snapshot()["rpm"] is None


async def test_in_flight_cap_with_limits() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=6000, max_in_flight=3, clock=clock)
    times = await grant_times(limiter, clock, 9, hold=2.0)
    assert times == [0.0] * 3 + [2.0] * 3 + [4.0] * 3


# ---------------------------------------------------------------------- refunds
async def test_unused_tokens_come_back() -> None:
    clock = FakeClock()
    limiter = Limiter(tpm=6000, clock=clock)  # burst 100 tokens
    p = await limiter.acquire(100)
    second = asyncio.ensure_future(limiter.acquire(70))
    await clock.advance(0.5)
    assert not second.done()
    limiter.release(p, used_tokens=30)
    await clock.advance(0)
    assert second.done()
    assert limiter.snapshot()["tokens_in_window"] == 100


async def test_release_zero_means_never_counted_and_none_keeps_everything() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=60, tpm=6000, clock=clock)
    p = await limiter.acquire(80)
    limiter.release(p, 0)
    snap = limiter.snapshot()
    assert (snap["requests_in_window"], snap["tokens_in_window"]) == (0, 0)
    q = await limiter.acquire(80)
    limiter.release(q, None)
    snap = limiter.snapshot()
    assert (snap["requests_in_window"], snap["tokens_in_window"]) == (1, 80)


async def test_usage_above_the_reservation_is_charged() -> None:
    limiter = Limiter(tpm=60_000, clock=FakeClock())
    p = await limiter.acquire(100)
    limiter.release(p, 150)
    assert limiter.snapshot()["tokens_in_window"] == 150


async def test_refund_after_the_window_moved_on_changes_nothing() -> None:
    clock = FakeClock()
    limiter = Limiter(tpm=6000, clock=clock)
    p = await limiter.acquire(100)
    await clock.advance(61)
    limiter.release(p, 10)
    assert limiter.snapshot()["tokens_in_window"] == 0
    assert (await limiter.acquire(100)).tokens == 100


async def test_release_twice_and_bad_usage_are_refused() -> None:
    limiter = Limiter(rpm=60, clock=FakeClock())
    p = await limiter.acquire(1)
    with pytest.raises(ValueError, match="used_tokens"):
        limiter.release(p, -1)
    limiter.release(p, 1)
    with pytest.raises(RuntimeError, match="released twice"):
        limiter.release(p, 1)


async def test_reserve_context_manager_refunds_what_it_is_told() -> None:
    limiter = Limiter(tpm=60_000, clock=FakeClock())
    async with limiter.reserve(500) as permit:
        assert isinstance(permit, Permit) and limiter.in_flight == 1
        permit.used_tokens = 200
    assert limiter.in_flight == 0
    assert limiter.snapshot()["tokens_in_window"] == 200


# ----------------------------------------------------------------- impossible
async def test_impossible_amount_is_refused_with_a_clear_message() -> None:
    limiter = Limiter(tpm=1000, clock=FakeClock())
    with pytest.raises(RequestTooLarge, match="1001 tokens.*1000 per minute") as e:
        await limiter.acquire(1001)
    assert isinstance(e.value, ValueError) and isinstance(e.value, UserError)
    with pytest.raises(ValueError, match="negative"):
        await limiter.acquire(-1)
    assert limiter.in_flight == 0 and (await limiter.acquire(1000)).tokens == 1000


async def test_waiter_that_no_longer_fits_after_a_lowered_limit_fails() -> None:
    clock = FakeClock()
    limiter = Limiter(tpm=6000, clock=clock)
    await limiter.acquire(5000)
    big = asyncio.ensure_future(limiter.acquire(3000))
    small = asyncio.ensure_future(limiter.acquire(100))
    await clock.advance(0.1)
    limiter.observe_headers({"x-ratelimit-limit-tokens": "2000"})
    await clock.advance(0)
    assert isinstance(big.exception(), RequestTooLarge)
    assert not small.done()  # now first in line, waiting for the window
    await clock.advance(61)
    assert small.done()


async def test_waiter_woken_then_refused_by_a_lowered_limit_fails_and_frees_the_queue() -> None:
    # A release wakes the head; before it runs, a lower limit says it can never fit.
    # It used to run on with its waker's result: IndexError on an empty queue, or,
    # with others queued, waiting forever outside the queue.
    clock = FakeClock()
    limiter = Limiter(tpm=100_000, max_in_flight=1, clock=clock)
    first = await limiter.acquire(1000)
    big = asyncio.ensure_future(limiter.acquire(50_000))
    small = asyncio.ensure_future(limiter.acquire(100))
    await clock.advance(0)
    assert limiter.waiting == 2
    limiter.release(first, 1000)  # big's future is done; big has not run yet
    limiter.set_limits(tpm=40_000)
    await clock.advance(0)
    assert isinstance(big.exception(), RequestTooLarge)
    assert small.done() and limiter.in_flight == 1 and limiter.waiting == 0


@pytest.mark.parametrize("kwargs", [{"rpm": 0}, {"tpm": -5}, {"max_in_flight": 0},
                                    {"burst_seconds": 0.0}, {"rpm": float("inf")}])
def test_bad_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Limiter(clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------- fairness
async def test_waiters_are_served_in_order_so_big_requests_are_not_starved() -> None:
    clock = FakeClock()
    limiter = Limiter(tpm=6000, clock=clock)  # burst 100 tokens
    order: list[str] = []
    await limiter.acquire(100)

    async def send(name: str, tokens: int) -> None:
        p = await limiter.acquire(tokens)
        order.append(name)
        limiter.release(p, None)

    tasks = [asyncio.ensure_future(send("big", 100))]
    await clock.advance(0)
    tasks += [asyncio.ensure_future(send(f"small{i}", 10)) for i in range(5)]
    await clock.run(asyncio.gather(*tasks))
    assert order == ["big", "small0", "small1", "small2", "small3", "small4"]


async def test_newcomer_that_would_fit_still_queues_behind_a_waiter() -> None:
    clock = FakeClock()
    limiter = Limiter(tpm=6000, burst_seconds=60, clock=clock)
    await limiter.acquire(5950)
    big = asyncio.ensure_future(limiter.acquire(100))  # does not fit: waits
    await clock.advance(1)
    small = asyncio.ensure_future(limiter.acquire(10))  # would fit, but big is first
    await clock.advance(1)
    assert not big.done() and not small.done() and limiter.waiting == 2
    await clock.advance(58)
    assert big.done() and small.done()
    assert big.result().at == small.result().at == 60.0


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    clock = FakeClock()
    limiter = Limiter(max_in_flight=1, clock=clock)
    p = await limiter.acquire(0)
    first = asyncio.ensure_future(limiter.acquire(0))
    second = asyncio.ensure_future(limiter.acquire(0))
    await clock.advance(0)
    first.cancel()
    await clock.advance(0)
    limiter.release(p)
    await clock.advance(0)
    assert second.done() and limiter.waiting == 0


# ------------------------------------------------------------------- 429 pause
async def test_pause_holds_every_sender_then_resumes_at_full_rate() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, clock=clock)
    first = await limiter.acquire(0)
    times: list[float] = []

    async def send() -> None:
        p = await limiter.acquire(0)
        times.append(clock.now())
        limiter.release(p)

    limiter.pause(5.0, "requests")
    assert limiter.paused_until == 5.0
    tasks = [asyncio.ensure_future(send()) for _ in range(25)]
    await clock.advance(4.99)
    assert times == []  # room in both windows, but paused
    await clock.run(asyncio.gather(*tasks))
    limiter.release(first)
    # After a requests 429 pacing is smooth: bursts of 2 (not the server's 10), then
    # one every 0.1 s from the pause's end, which is still the full 600 a minute.
    assert times[0] == 5.0
    assert times[:20] == pytest.approx([5.0, *(5.0 + 0.1 * i for i in range(19))])
    snap = limiter.snapshot()
    assert snap["pauses"]["requests"] == 1 and snap["paused_seconds"] == 5.0
    assert limiter.paused_until is None


async def test_pauses_extend_but_never_shorten() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.pause(10, "tokens")
    limiter.pause(3, "unknown")
    assert limiter.paused_until == 10.0
    task = asyncio.ensure_future(limiter.acquire(1))
    await clock.advance(9.9)
    assert not task.done()
    await clock.advance(0.1)
    assert task.done()
    with pytest.raises(ValueError, match="kind"):
        limiter.pause(1, "minutes")
    with pytest.raises(ValueError):
        limiter.pause(float("nan"))


# --------------------------------------------------------------- headers
def server_headers(limit_r: int, remaining_r: int, limit_t: int | None = None,
                   remaining_t: int | None = None, reset: str = "60s") -> dict[str, str]:
    h = {"x-ratelimit-limit-requests": str(limit_r),
         "x-ratelimit-remaining-requests": str(remaining_r),
         "x-ratelimit-reset-requests": reset}
    if limit_t is not None:
        h |= {"x-ratelimit-limit-tokens": str(limit_t),
              "x-ratelimit-remaining-tokens": str(remaining_t),
              "x-ratelimit-reset-tokens": reset}
    return h


async def test_server_using_more_than_we_did_lowers_our_room_to_the_truth_and_no_further() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=100, burst_seconds=60, clock=clock)
    early = [await limiter.acquire(0) for _ in range(3)]
    # Another client used 40: the server had counted 41 when it answered the first.
    limiter.observe_headers(server_headers(100, 100 - 41), early[0])
    # Our two later requests may already have been among those 41: only 38 is certain.
    assert limiter.snapshot()["requests_in_window"] == 3 + 38
    limiter.observe_headers(server_headers(100, 100 - 42), early[1])
    limiter.observe_headers(server_headers(100, 100 - 43), early[2])
    assert limiter.snapshot()["requests_in_window"] == 43  # 40 theirs + 3 ours
    # The same outside usage reported again is not charged again.
    for p in early:
        limiter.observe_headers(server_headers(100, 100 - 43), p)
    assert limiter.snapshot()["requests_in_window"] == 43


async def test_stale_remaining_never_triggers_a_correction() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=100, burst_seconds=60, clock=clock)
    first = await limiter.acquire(0)
    for _ in range(30):  # granted after `first`; the server may or may not have seen them
        await limiter.acquire(0)
    for seen in (1, 15, 31):
        limiter.observe_headers(server_headers(100, 100 - seen), first)
    # the server believing we have *more* room never raises ours either
    limiter.observe_headers(server_headers(100, 100), first)
    snap = limiter.snapshot()
    assert snap["corrections"] == 0 and snap["requests_in_window"] == 31


async def test_without_a_permit_the_oldest_in_flight_stands_in() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=100, burst_seconds=60, clock=clock)
    await limiter.acquire(0)
    await limiter.acquire(0)
    limiter.observe_headers(server_headers(100, 100 - 2))
    assert limiter.snapshot()["corrections"] == 0
    limiter.observe_headers(server_headers(100, 100 - 50))
    assert limiter.snapshot()["requests_in_window"] == 50


async def test_correction_lasts_until_the_server_reset() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=100, tpm=100_000, burst_seconds=60, clock=clock)
    p = await limiter.acquire(1000)
    limiter.observe_headers(server_headers(100, 50, 100_000, 40_000, reset="10s"), p)
    snap = limiter.snapshot()
    assert (snap["requests_in_window"], snap["tokens_in_window"]) == (50, 60_000)
    assert (snap["corrected_requests"], snap["corrected_tokens"]) == (49, 59_000)
    await clock.advance(10)
    snap = limiter.snapshot()
    assert (snap["requests_in_window"], snap["tokens_in_window"]) == (1, 1000)


async def test_small_discrepancies_are_ignored() -> None:
    limiter = Limiter(rpm=1000, clock=FakeClock())
    p = await limiter.acquire(0)
    limiter.observe_headers(server_headers(1000, 1000 - 1 - 5), p)  # 5 < 1% of 1000
    assert limiter.snapshot()["corrections"] == 0


async def test_limits_are_learned_from_the_first_answer() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    permits = [await limiter.acquire(100) for _ in range(4)]
    assert limiter.snapshot()["rpm"] is None
    # The answer to the first request: the server had seen 10 requests (ours and others).
    limiter.observe_headers(server_headers(120, 110, 60_000, 59_000), permits[0])
    assert (limiter.rpm, limiter.tpm) == (120, 60_000)
    snap = limiter.snapshot()
    assert (snap["rpm_source"], snap["tpm_source"]) == ("server", "server")
    # server's 10 + 3 granted after the answered one
    assert snap["requests_in_window"] == 13
    assert snap["tokens_in_window"] == 1000 + 300
    assert snap["burst_requests"] == 2
    for p in permits:
        limiter.release(p, 50)  # granted before limits were known: no window to refund
    assert limiter.snapshot()["tokens_in_window"] == 1300


async def test_user_limit_below_the_server_limit_is_kept() -> None:
    limiter = Limiter(rpm=50, clock=FakeClock())
    limiter.observe_headers({"x-ratelimit-limit-requests": "500"})
    assert limiter.rpm == 50 and limiter.snapshot()["rpm_source"] == "user"


async def test_lowered_server_limit_is_adopted_at_once() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, clock=clock)
    times: list[float] = []

    async def send() -> None:
        p = await limiter.acquire(0)
        times.append(clock.now())
        limiter.release(p)

    await clock.run(asyncio.gather(*(send() for _ in range(20))))
    assert times[-1] == pytest.approx(1.0)  # a waiter wakes a hair (0.1 us) after it is due
    limiter.observe_headers({"x-ratelimit-limit-requests": "120"})
    assert limiter.rpm == 120 and limiter.snapshot()["burst_requests"] == 2
    times.clear()
    await clock.run(asyncio.gather(*(send() for _ in range(10))))
    # The old bucket was empty at t=1.0, so the new one (2, refilled at 2/s) starts empty too.
    assert fits_bucket([1.0, *times], 2, 2.0, [2, *[1] * len(times)])
    assert times[0] == pytest.approx(1.5)


async def test_set_limits_changes_the_user_limit_only() -> None:
    limiter = Limiter(rpm=100, tpm=1000, clock=FakeClock())
    limiter.set_limits(tpm=None)
    assert (limiter.rpm, limiter.tpm) == (100, None)
    limiter.set_limits(rpm=50)
    assert limiter.rpm == 50
    with pytest.raises(ConfigError):
        limiter.set_limits(rpm=-1)


async def test_unreadable_headers_are_counted_not_fatal() -> None:
    limiter = Limiter(rpm=100, clock=FakeClock())
    limiter.observe_headers({"x-ratelimit-remaining-requests": "lots",
                             "x-ratelimit-reset-requests": "soon"})
    snap = limiter.snapshot()
    assert snap["invalid_headers"] == 2 and snap["corrections"] == 0


# ---------------------------------------------------------- simulated server
@dataclass
class SimServer:
    """A server counting in sliding 60 s windows, with rate-limit headers on every answer.

    Like the limiter, it holds a request's reservation while it runs and its
    real usage once answered. A request that would take it over a limit is
    refused (429, not counted) with a retry-after.
    """

    clock: FakeClock
    rpm: int
    tpm: int
    other_rpm: float = 0.0  # another client on the same key, sending evenly
    log: list[list[float]] = field(default_factory=list)  # [time, tokens] of ours
    refused: int = 0

    def others_between(self, a: float, b: float) -> int:
        """Requests the other client sent in (a, b]."""
        if not self.other_rpm:
            return 0
        step = 60.0 / self.other_rpm
        return max(0, math.floor(b / step) - math.floor(max(a, 0.0) / step))

    def receive(self, reserved: int) -> tuple[list[float] | None, dict[str, str]]:
        now = self.clock.now()
        recent = [e for e in self.log if e[0] + 60.0 > now]
        others = self.others_between(now - 60.0, now)
        used_r = len(recent) + others + 1
        used_t = int(sum(e[1] for e in recent)) + reserved
        entry: list[float] | None = None
        if used_r > self.rpm or used_t > self.tpm:
            self.refused += 1
            used_r, used_t = used_r - 1, used_t - reserved
        else:
            entry = [now, float(reserved)]
            self.log.append(entry)
        headers = {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-requests": str(max(0, self.rpm - used_r)),
            "x-ratelimit-remaining-tokens": str(max(0, self.tpm - used_t)),
            "x-ratelimit-reset-requests": "1m0s",
            "x-ratelimit-reset-tokens": "1m0s",
        }
        if entry is None:
            oldest = recent[0][0] if recent else now
            headers["retry-after"] = f"{max(0.1, oldest + 60.0 - now):.3f}"
        return entry, headers


@dataclass
class SimResult:
    times: list[float]
    used: list[int]


async def simulate(limiter: Limiter, clock: FakeClock, server: SimServer, *, seconds: float,
                   reserve: int, usage: Callable[[], int], latency: float = 0.3,
                   workers: int = 64) -> SimResult:
    """Workers send until ``seconds``; returns what the server accepted (time, tokens used)."""
    sent: list[tuple[float, int]] = []

    async def worker() -> None:
        while True:
            p = await limiter.acquire(reserve)
            if clock.now() >= seconds:
                limiter.release(p, 0)
                return
            entry, headers = server.receive(reserve)
            await clock.sleep(latency)
            limiter.observe_headers(headers, p)
            if entry is None:  # 429: what the engine does
                limiter.release(p, 0)
                limiter.pause(retry_after_seconds(headers) or 1.0, "requests")
                continue
            used = usage()
            entry[1] = used
            limiter.release(p, used)
            sent.append((entry[0], used))

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(workers)))

    await clock.run(main())
    sent.sort()
    return SimResult([t for t, _ in sent], [u for _, u in sent])


async def test_simulated_rpm_bound_run_uses_95_percent_and_never_overshoots() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, tpm=1_000_000, max_in_flight=64, clock=clock)
    server = SimServer(clock, rpm=600, tpm=1_000_000)
    rng = random.Random(7)
    res = await simulate(limiter, clock, server, seconds=120, reserve=1000,
                         usage=lambda: rng.randint(300, 900))
    first_minute = sum(1 for t in res.times if t < 60.0)
    assert first_minute >= 0.95 * 600
    assert max_in_window(res.times, 60.0) <= 600
    assert fits_bucket(res.times, 10, 10.0)
    assert server.refused == 0
    assert limiter.snapshot()["corrections"] == 0  # the headers agreed: nothing to correct


async def test_simulated_tpm_bound_run_uses_95_percent_and_never_overshoots() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=10_000, tpm=60_000, max_in_flight=64, clock=clock)
    rng = random.Random(11)
    server = SimServer(clock, rpm=10_000, tpm=60_000)
    # Each request reserves 300 and uses 150-300: refunds matter for throughput.
    res = await simulate(limiter, clock, server, seconds=120, reserve=300,
                         usage=lambda: rng.randint(150, 300))
    first_minute = sum(u for t, u in zip(res.times, res.used, strict=True) if t < 60.0)
    assert first_minute >= 0.95 * 60_000
    assert max_in_window(res.times, 60.0, res.used) <= 60_000
    # A token bucket: at most a full burst plus one second of refill in any second.
    assert max_in_window(res.times, 1.0, res.used) <= 2 * 1000
    assert server.refused == 0 and limiter.snapshot()["corrections"] == 0


async def test_simulated_shared_key_makes_room_for_the_other_client() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, clock=clock)  # nobody told us about the other client
    server = SimServer(clock, rpm=600, tpm=10**9, other_rpm=120)
    res = await simulate(limiter, clock, server, seconds=240, reserve=10, usage=lambda: 10)
    accepted = len(res.times)
    # The other client's requests are only learned from our answers, so a few of
    # ours are refused; corrections keep that rare, and the pause recovers.
    assert server.refused <= 0.02 * accepted
    last_minute = sum(1 for t in res.times if 180.0 <= t < 240.0)
    assert last_minute >= 0.95 * (600 - 120)
    assert limiter.snapshot()["corrections"] >= 1


# ----------------------------------------------------------------- fake clock
async def test_fake_clock_wakes_sleepers_in_order_at_their_times() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def nap(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.now()))

    tasks = [asyncio.ensure_future(nap(n, s)) for n, s in (("c", 3), ("a", 1), ("b", 2))]
    await clock.advance(2.5)
    assert woke == [("a", 1.0), ("b", 2.0)] and clock.now() == 2.5
    await clock.advance(1)
    assert woke[-1] == ("c", 3.0)
    await asyncio.gather(*tasks)
    with pytest.raises(ValueError):
        await clock.advance(-1)


async def test_fake_clock_run_reports_a_deadlock() -> None:
    clock = FakeClock()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(RuntimeError, match="blocked"):
        await clock.run(never)
    with pytest.raises(TimeoutError):
        await clock.run(clock.sleep(100), timeout=10)


def test_public_api_is_what_the_package_exports() -> None:
    assert set(ratelimit.__all__) == {
        "Clock", "FakeClock", "Limiter", "MonotonicClock", "Permit", "RateLimitHeaders",
        "RequestTooLarge", "RetryPolicy", "parse_duration", "parse_rate_limit_headers",
        "rate_limit_kind", "retry_after_seconds", "retry_delay",
    }
    for name in ratelimit.__all__:
        assert getattr(ratelimit, name) is not None


async def test_a_lowered_server_limit_does_not_hold_a_minute_of_old_rate_against_us() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.observe_headers({"x-ratelimit-limit-requests": "600"})

    async def grant() -> None:
        task = asyncio.ensure_future(limiter.acquire(0))
        await clock.advance(0)
        while not task.done():
            await clock.advance(0.01)
        limiter.release(task.result(), None)

    for _ in range(300):  # 30 s at the old 10 requests/s
        await grant()
        await clock.advance(0.1)
    assert limiter.snapshot()["requests_in_window"] == 300
    limiter.observe_headers({"x-ratelimit-limit-requests": "300"})
    t0 = clock.now()
    granted = 0
    while clock.now() - t0 < 10:
        await grant()
        granted += 1
    # The new rate is 5/s: about 50 in 10 s, not a 30 s stall while the old minute ages out.
    assert granted >= 45
    snap = limiter.snapshot()
    assert snap["rpm"] == 300 and snap["requests_in_window"] <= 300


async def test_a_tokens_429_empties_our_bucket_so_stale_refunds_do_not_linger() -> None:
    clock = FakeClock()
    limiter = Limiter(tpm=6000, clock=clock)  # a 100-token bucket, 100 tokens/s
    p = await limiter.acquire(100)
    limiter.release(p, used_tokens=10)  # refunded 90: we now believe 90 are free
    limiter.pause(0.0, "tokens")  # the server says its bucket is empty
    task = asyncio.ensure_future(limiter.acquire(100))
    await clock.advance(0.5)
    assert not task.done()  # 0.5 s refills 50, not the 100 needed
    await clock.advance(0.5 + 1e-6)
    assert task.done()


async def test_a_requests_429_spends_our_burst_so_the_pause_is_not_followed_by_a_burst() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, clock=clock)  # bursts of 10 per second
    limiter.release(await limiter.acquire(0), None)
    limiter.pause(0.1, "requests")
    granted = []
    for _ in range(10):
        task = asyncio.ensure_future(limiter.acquire(0))
        while not task.done():
            await clock.advance(0.01)
        limiter.release(task.result(), None)
        granted.append(clock.now())
    # After the pause, requests go at the steady 10/s, not 9 at once.
    assert granted[-1] - granted[0] >= 0.8
