"""The limiter at real latencies: adaptive in-flight target, absolute pacing, learned charges.

Everything runs on a FakeClock (no test sleeps for real); the server side is the
fake server's own pure bucket model (``dynogen.testing.fake_limits.RateLimiter``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from dynogen.ratelimit import FakeClock, Limiter
from dynogen.ratelimit.calibrate import MIN_PAIRS, ChargeModel, Concurrency
from dynogen.testing.fake_limits import RateLimiter


class LateClock(FakeClock):
    """A FakeClock whose every timer fires ``late`` seconds after it was due (a busy loop)."""

    __slots__ = ("late",)

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.late if seconds > 0 else seconds)


async def drive(limiter: Limiter, clock: FakeClock, *, until: float,
                hold: Callable[[float], float], workers: int,
                server: RateLimiter | None = None,
                parts: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)) -> dict[str, list]:
    """Workers send until ``until``; ``hold(now)`` is how long an answer takes.

    ``parts()`` gives (our count incl. max_tokens, max_tokens, what the server charges).
    Returns the grant times, in-flight counts seen at each grant, refusals, and
    the limiter's snapshot one second before the end (``snap``).
    """
    out: dict[str, list] = {"times": [], "in_flight": [], "refused": [], "charged": [],
                            "snap": []}

    async def probe() -> None:
        await clock.sleep(until - 1.0)
        out["snap"].append(limiter.snapshot())

    async def worker() -> None:
        while clock.now() < until:
            ours, m, real = parts()
            p = await limiter.acquire(ours, m)
            now = clock.now()
            if now >= until:
                limiter.release(p, 0)
                return
            if server is not None:
                refusal = server.admit(tokens=real, now=now)
                headers = server.headers(now)
                if refusal is not None:
                    out["refused"].append(now)
                    limiter.observe_headers(headers, p)
                    limiter.observe_refusal(p, refusal.body)
                    limiter.release(p, 0)
                    limiter.pause(refusal.wait, refusal.kind)
                    continue
            out["times"].append(now)
            out["in_flight"].append(limiter.in_flight)
            out["charged"].append(real)
            await clock.sleep(hold(now))
            if server is not None:
                limiter.observe_headers(headers, p)
            limiter.release(p, None)

    async def main() -> None:
        await asyncio.gather(probe(), *(worker() for _ in range(workers)))

    await clock.run(main())
    return out


def rate_between(times: list[float], a: float, b: float) -> float:
    return sum(1 for t in times if a <= t < b) / (b - a)


# ------------------------------------------------------------------ concurrency
def test_concurrency_estimate_is_littles_law_on_the_hold_time() -> None:
    c = Concurrency(hard=4096)
    assert c.target(200.0) == 64  # nothing measured: a sensible start
    assert c.target(None) == 64  # no rate known: today's default
    # 100 permits held 2 s each, one released every 20 ms: area/releases = 2 s.
    now, in_flight = 0.0, 100
    c.step(now, in_flight, False)
    for _ in range(200):
        now += 0.02
        c.step(now, in_flight, True)
    assert c.hold == pytest.approx(2.0, rel=0.05)
    assert c.target(200.0) == pytest.approx(200 * 2.0 * 2 + 8, rel=0.05)
    assert Concurrency(hard=300).target(200.0, 250) == 250  # never past the hard cap
    c.hard = 100
    assert c.target(200.0) == 100


async def test_in_flight_grows_to_fill_the_rate_at_seconds_long_answers() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=6000, clock=clock)  # 100/s; answers take 2-4 s: 300 in flight
    rng = random.Random(3)
    res = await drive(limiter, clock, until=30.0, workers=1200,
                      hold=lambda _: 2.0 + 2.0 * rng.random())
    # A fixed cap of 64 would give 64 / 3 s = 21/s; Little's law gives the full rate.
    assert rate_between(res["times"], 5.0, 30.0) >= 0.97 * 100
    assert max(res["in_flight"]) >= 300
    snap = res["snap"][0]
    assert snap["hold_seconds"] == pytest.approx(3.0, rel=0.2)
    assert snap["max_in_flight"] <= snap["max_senders"]


async def test_in_flight_target_follows_latency_when_it_changes_mid_run() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=3000, clock=clock)  # 50/s
    res = await drive(limiter, clock, until=60.0, workers=800,
                      hold=lambda now: 0.5 if now < 20.0 else 6.0)
    # Answers slowed down 12x at t=20: the target must follow or the rate collapses.
    assert rate_between(res["times"], 30.0, 60.0) >= 0.97 * 50
    assert res["snap"][0]["max_in_flight"] >= 50 * 6.0 * 2 * 0.8


async def test_user_cap_bounds_the_target() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=6000, max_in_flight=50, clock=clock)
    assert limiter.max_senders == 50
    res = await drive(limiter, clock, until=10.0, workers=200, hold=lambda _: 2.0)
    assert max(res["in_flight"]) == 50
    assert rate_between(res["times"], 2.0, 10.0) == pytest.approx(25.0, rel=0.05)


async def test_without_any_rate_the_cap_is_the_users_or_64() -> None:
    clock = FakeClock()
    assert Limiter(clock=clock).max_in_flight == 64
    assert Limiter(max_in_flight=4, clock=clock).max_in_flight == 4  # --local: the server's slots
    assert Limiter(clock=clock).max_senders >= 64


# ------------------------------------------------------------- absolute pacing
@pytest.mark.parametrize("late", [0.0, 0.001, 0.004])
async def test_late_timers_cost_nothing_at_30000_rpm(late: float) -> None:
    clock = LateClock(late)
    limiter = Limiter(rpm=30_000, clock=clock)  # 500/s: a timer every 2 ms
    server = RateLimiter(rpm=30_000, tpm=None, now=0.0)
    res = await drive(limiter, clock, until=20.0, workers=1500, hold=lambda _: 0.5,
                      server=server)
    # Each wake-up is late, but the bucket's level comes from absolute times: what a
    # late timer slept through is spent at once, so the rate never drifts down.
    assert rate_between(res["times"], 2.0, 20.0) >= 0.995 * 500
    assert not res["refused"]  # and the server's bucket is never overdrawn


async def test_burst_is_used_at_the_start_and_after_idle_never_more() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=600, clock=clock)  # a burst of 10

    async def burst() -> list[float]:
        tasks = [asyncio.ensure_future(limiter.acquire(0)) for _ in range(15)]
        await clock.run(asyncio.gather(*tasks))
        for t in tasks:
            limiter.release(t.result(), None)
        return [clock.now()]

    t0 = clock.now()
    first = await burst()
    assert first[0] - t0 == pytest.approx(0.5)  # 10 at once, 5 more at 10/s
    await clock.advance(0.3)  # idle 0.3 s: only 3 back in the bucket
    t1 = clock.now()
    second = await burst()
    assert second[0] - t1 == pytest.approx(1.2)  # 3 at once, 12 at 10/s
    await clock.advance(30.0)  # long idle: a full burst again, never more
    t2 = clock.now()
    third = await burst()
    assert third[0] - t2 == pytest.approx(0.5)


# ----------------------------------------------------------- charge calibration
def test_charge_model_is_conservative_until_the_server_has_said() -> None:
    m = ChargeModel()
    assert m.charge(1000, 256) == 1000
    m.observe_exact(700.0, 744, 256)
    assert not m.ready and m.charge(1000, 256) == 1000


def test_charge_model_learns_that_the_schema_is_not_charged() -> None:
    rng = random.Random(5)
    m = ChargeModel()
    rate, deficit, t, psum, msum = 2_000_000 / 60, 30_000.0, 0.0, 0.0, 0.0
    for seq in range(1, 200):
        msgs = rng.randint(400, 900)
        schema = rng.randint(80, 160)
        p, mt = msgs + schema, 256  # we count the schema; this server does not
        t += 0.02
        psum += p
        msum += mt
        deficit += msgs + mt - rate * 0.02
        m.observe(seq, t + rng.uniform(-0.001, 0.001), deficit, psum, msum, rate, p, mt)
    assert m.ready and m.pairs >= MIN_PAIRS
    # The server charges messages + max_tokens: about 650 + 256 of our ~770 + 256.
    ours = 770 + 256
    assert m.charge(ours, 256) == pytest.approx((650 + 256) * 1.01, rel=0.04)


def test_charge_model_ignores_pairs_across_a_full_bucket() -> None:
    m = ChargeModel()
    # Deficits near zero with long gaps: the bucket may have been full in between.
    for seq in range(1, 100):
        m.observe(seq, seq * 1.0, 10.0, seq * 500.0, seq * 100.0, 1000.0, 500, 100)
    assert m.pairs == 0 and not m.ready


async def test_tpm_bound_run_reserves_what_the_server_charges() -> None:
    clock = FakeClock()
    tpm = 600_000
    limiter = Limiter(rpm=100_000, tpm=tpm, clock=clock)
    server = RateLimiter(rpm=100_000, tpm=tpm, now=0.0)
    rng = random.Random(9)

    def parts() -> tuple[int, int, int]:
        msgs, schema, mt = rng.randint(400, 800), rng.randint(100, 200), 256
        return msgs + schema + mt, mt, msgs + mt

    res = await drive(limiter, clock, until=120.0, workers=400, hold=lambda _: 1.5,
                      server=server, parts=parts)
    snap = limiter.snapshot()
    assert snap["charge_model"]["adopted"]
    charged = sum(c for t, c in zip(res["times"], res["charged"], strict=True)
                  if 30.0 <= t < 120.0)
    # Reserving our count (schema included) would use about 83 % of the TPM.
    assert charged / 90.0 * 60.0 >= 0.97 * tpm
    assert len(res["refused"]) <= 0.005 * len(res["times"])


def test_a_saturated_process_does_not_grow_the_target() -> None:
    """A limit far above what the process can do: the hold time is our own queue."""
    cpu = [0.0]
    c = Concurrency(hard=4096, cpu=lambda: cpu[0])
    now = 0.0
    c.step(now, 64, False)
    for _ in range(100):  # each release 10 ms apart, 64 in flight, CPU busy all along
        now += 0.01
        cpu[0] += 0.01
        c.step(now, 64, True)
    assert c.saturated and c.hold is not None
    assert c.target(16_667.0, 64) == 64  # Little's law alone would say the hard cap
    for _ in range(100):  # the same with the CPU mostly idle: waiting on a slow server
        now += 0.01
        cpu[0] += 0.001
        c.step(now, 64, True)
    assert not c.saturated and c.target(16_667.0, 64) == 4096
