"""Run at an API's limits and never past them.

``Limiter`` enforces, together: requests per minute, tokens per minute, and a
cap on requests in flight that follows the limits (Little's law, see below).
We do not use ``aiolimiter`` or ``asyncio-throttle`` directly: each is one
bucket of one resource, and neither can refund the unused part of a
reservation, hold every sender back after a 429, or follow what the server's
headers say about its limits. The shape (``__slots__``, FIFO waiters,
time from one injected clock, refusing an amount that can never fit) is
aiolimiter's.

Where each part lives (``Limiter`` is the one class callers use)
    * ``pacing`` — the minute window, the burst buckets and refunds: how pacing
      works (``Pacer``, the limiter's base class);
    * ``following`` — what the server's headers and 429 bodies teach: its limits,
      usage beyond ours, its charge per request (``ServerFollower``);
    * ``waiters`` — the FIFO of requests that must wait (``WaitQueue``, ``Waiter``);
    * ``permit``, ``senders`` — the grant record (and the one outright refusal),
      and the hard in-flight cap from the open-files limit;
    * here — ``acquire``/``release``, the in-flight target, 429 pauses and the
      limits in force.

How many requests in flight
    ``max_senders`` is the hard cap — ``--max-in-flight`` if given, else what the
    open-files limit allows (``auto_max_senders``) — and sizes the callers'
    worker and connection pools. Within it the limiter keeps a target from
    Little's law: binding request rate (RPM, or TPM / tokens per request) x the
    measured time a request is held x 2, plus a little (``calibrate.Concurrency``).
    So a 10,000 RPM account with 3 s answers keeps about 1,000 in flight, and a
    300 ms server a few dozen. Before anything came back the target doubles each
    time it is reached (the pacer, not the cap, decides how fast requests go).
    With no rate known it is the user's cap, or 64.

429s
    ``pause(seconds, kind)`` holds back every sender until then; afterwards the
    windows alone decide, so sending resumes at full speed. A tokens 429 also
    empties our token bucket (the server's is empty, so ours cannot be fuller),
    and a requests 429 makes request pacing smooth — bursts of a quarter of the
    server's (at least 2), still the full rate — so a pause is not followed by a
    burst refused again.

Cost
    ``acquire`` with room available creates no future and takes no lock; only
    waiters create futures. With no rpm/tpm it only counts in-flight requests.
    Measured (CPython 3.11, 2 cores): see bench/README.md ("limiter cost").
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Final

from dynogen.errors import ConfigError
from dynogen.ratelimit.calibrate import START as CONC_START
from dynogen.ratelimit.calibrate import ChargeModel, Concurrency
from dynogen.ratelimit.clock import Clock, MonotonicClock
from dynogen.ratelimit.following import DEADBAND as DEADBAND
from dynogen.ratelimit.following import ServerFollower, limit_source, min_limit
from dynogen.ratelimit.pacing import WINDOW
from dynogen.ratelimit.permit import Permit, RequestTooLarge, Reservation
from dynogen.ratelimit.senders import AUTO_MAX_SENDERS, auto_max_senders
from dynogen.ratelimit.waiters import MIN_SLEEP, Waiter, WaitQueue

__all__ = ["AUTO_MAX_SENDERS", "KINDS", "WINDOW", "Limiter", "Permit", "RequestTooLarge",
           "auto_max_senders"]

KINDS: Final = ("requests", "tokens", "unknown")
_INF: Final = math.inf
SMOOTH: Final = 0.25  # after a requests 429, bursts are this share of the server's
_TINY: Final = 1e-7  # added to a bucket's wait so float rounding never wakes us just short


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def _check_limit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"--{name} must be a positive number (got {value})")
    return float(value)


class Limiter(WaitQueue, ServerFollower):
    """Requests/minute, tokens/minute and in-flight cap, paced and steered by server headers.

    >>> import asyncio
    >>> limiter = Limiter(rpm=500, tpm=200_000, max_in_flight=64)
    >>> async def call() -> None:
    ...     permit = await limiter.acquire(1200)      # prompt + max_tokens
    ...     limiter.observe_headers({"x-ratelimit-remaining-requests": "499"}, permit)
    ...     limiter.release(permit, used_tokens=830)  # 370 tokens come back
    >>> asyncio.run(call())
    >>> limiter.snapshot()["tokens_in_window"]
    830
    """

    # The minute window and buckets are ``Pacer``'s slots, the server's limits and
    # header counts ``ServerFollower``'s; these are the rest.
    __slots__ = (
        "_clock", "_burst_seconds", "_user_cap", "_target", "_conc", "_in_flight",
        "_unlogged_r", "_unlogged_t", "_user_rpm", "_user_tpm", "_limited",
        "_rate", "_mean_tok", "_charge", "_grants", "_psum", "_msum", "_slot_waits",
        "_held", "_waiters", "_paused_until", "_pauses", "_paused_seconds", "_smooth_r",
    )

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 max_in_flight: int | None = None, *, burst_seconds: float = 1.0,
                 clock: Clock | None = None) -> None:
        if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
            raise ConfigError(f"burst_seconds must be a positive number (got {burst_seconds})")
        super().__init__()  # the window, buckets and server state start empty
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._burst_seconds = float(burst_seconds)
        self._user_cap: int | None = None
        # The CPU guard reads the process's CPU time against the clock: real clocks only.
        self._conc = Concurrency(auto_max_senders(),
                                 time.process_time if isinstance(self._clock, MonotonicClock)
                                 else None)
        self._target = 1
        self._rate: float | None = None  # binding requests/s (None: no limit known)
        self._mean_tok = 0.0  # tokens reserved per request, smoothed (for a TPM-bound rate)
        self._charge = ChargeModel()
        self._grants = 0
        self._psum = 0.0
        self._msum = 0.0
        self._slot_waits = 0
        self._in_flight = 0
        self.max_in_flight = max_in_flight
        self._unlogged_r = 0  # in flight, granted while no limit was known
        self._unlogged_t = 0
        self._user_rpm = _check_limit("rpm", rpm)
        self._user_tpm = _check_limit("tpm", tpm)
        self._limited = False
        self._smooth_r = False  # after a requests 429: one request per 60/rpm seconds
        self._held: dict[Permit, None] = {}  # logged permits in flight, oldest first
        self._waiters: deque[Waiter] = deque()
        self._paused_until = 0.0
        self._pauses = dict.fromkeys(KINDS, 0)
        self._paused_seconds = 0.0
        self._apply_limits(self._clock.now())

    # ------------------------------------------------------------------ state
    @property
    def clock(self) -> Clock:
        """The one clock every wait of a run reads (retry backoff included)."""
        return self._clock

    @property
    def rpm(self) -> float | None:
        """Requests per minute in force: ``min(user's, server's)``; ``None`` = no limit."""
        return self._rpm

    @property
    def tpm(self) -> float | None:
        """Tokens per minute in force: ``min(user's, server's)``; ``None`` = no limit."""
        return self._tpm

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def max_in_flight(self) -> int:
        """Requests allowed in flight now: the adaptive target (see ``calibrate.Concurrency``)."""
        return self._target

    @max_in_flight.setter
    def max_in_flight(self, value: int | None) -> None:
        """The user's cap (``--max-in-flight``); ``None``: only the automatic one."""
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"--max-in-flight must be a whole number of at least 1 (got {value})")
        self._user_cap = value
        self._conc.hard = value if value is not None else auto_max_senders()
        self._retarget()

    @property
    def max_senders(self) -> int:
        """The most requests that can ever be in flight: size worker and connection pools by it.

        The user's ``--max-in-flight`` if given, else a cap from the open-files limit
        (each request in flight holds a socket), at most ``AUTO_MAX_SENDERS``.
        """
        return self._conc.hard

    @property
    def paused_until(self) -> float | None:
        """Clock time until which every sender is held back after a 429, or ``None``."""
        if self._paused_until and self._clock.now() < self._paused_until:
            return self._paused_until
        return None

    # ---------------------------------------------------------------- acquire
    async def acquire(self, tokens: int, max_tokens: int = 0) -> Permit:
        """Wait for an in-flight slot, one request and room for ``tokens`` tokens; FIFO.

        ``tokens`` is our conservative count (prompt + ``max_tokens``); pass
        ``max_tokens`` too, so that once the server's own charge has been learned
        from its headers (``ChargeModel``) that charge is what is reserved.
        """
        if not tokens >= 0:
            raise ValueError(f"a request cannot reserve a negative number of tokens ({tokens})")
        charge = self._charge.charge(tokens, max_tokens) if self._charge.ready else tokens
        tpm = self._tpm
        if tpm is not None and charge > tpm:
            raise self._too_large(charge, tpm)
        if not self._waiters and self._in_flight < self._target:
            if not self._limited and not self._paused_until:
                return self._grant_unlogged(charge)
            now = self._clock.now()
            if self._wait_time(now, charge) == 0.0:
                return self._grant(now, charge, tokens, max_tokens)
        return await self._wait(charge, tokens, max_tokens)

    def reserve(self, tokens: int) -> Reservation:
        """``async with limiter.reserve(n) as permit:`` acquire, then release on exit.

        Set ``permit.used_tokens`` inside the block to refund the rest; left
        unset, the whole reservation is kept.
        """
        return Reservation(self, tokens)

    def release(self, permit: Permit, used_tokens: int | None = None) -> None:
        """Free the permit's slot and settle its tokens.

        ``used_tokens``: what the request really used (the rest is refunded);
        ``0`` = it never counted against the server (not sent, or refused), so
        its request and all its tokens come back; ``None`` = unknown, keep it all.
        """
        if permit._released:
            raise RuntimeError(f"{permit!r} was released twice")
        if used_tokens is not None and not used_tokens >= 0:
            raise ValueError(f"used_tokens must be 0 or more (got {used_tokens})")
        permit._released = True
        if permit.at is None:
            self._in_flight -= 1
            self._unlogged_r -= 1
            self._unlogged_t -= permit.tokens
        else:
            if self._conc.step(self._clock.now(), self._in_flight, True):
                self._period()
            self._in_flight -= 1
            del self._held[permit]
            if used_tokens is not None:
                if used_tokens == 0:
                    self._adjust(permit, -permit._req, -permit._tok)
                elif used_tokens != permit._tok:
                    self._adjust(permit, 0, used_tokens - permit._tok)
        if self._waiters:
            self._wake_head()

    # --------------------------------------------------- 429s, limits, report
    def pause(self, seconds: float, kind: str = "unknown") -> None:
        """After a 429: hold back every sender for ``seconds``; then the windows alone decide."""
        if kind not in KINDS:
            raise ValueError(f"rate-limit kind must be one of {', '.join(KINDS)} (got {kind!r})")
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"pause needs a finite number of seconds >= 0 (got {seconds})")
        self._pauses[kind] += 1
        now = self._clock.now()
        if kind == "tokens" and self._tpm is not None:
            # The server's token bucket is empty: ours cannot be fuller. Without this,
            # tokens refunded before we learnt the server does not refund would stay
            # in our bucket for good (it never fills up under load to shed them).
            self._tb_level = min(self._tb_refill(now), 0.0)
        elif kind == "requests" and self._rpm is not None:
            # The server's request bucket is empty: ours cannot be fuller either.
            self._rb_level = min(self._rb_refill(now), 0.0)
            if not self._smooth_r:
                # The server refuses even our short bursts: pace requests one at a time
                # from now on. That is still the full rate, only without bunching.
                self._smooth_r = True
                self._apply_limits(now)
        until = now + seconds
        if until > self._paused_until:
            self._paused_seconds += until - max(now, self._paused_until)
            self._paused_until = until

    def set_limits(self, rpm: float | None | _Unset = UNSET,
                   tpm: float | None | _Unset = UNSET) -> None:
        """Change the user's limits (``None`` = none); the server's, if lower, still win."""
        if not isinstance(rpm, _Unset):
            self._user_rpm = _check_limit("rpm", rpm)
        if not isinstance(tpm, _Unset):
            self._user_tpm = _check_limit("tpm", tpm)
        self._apply_limits(self._clock.now())

    def snapshot(self) -> dict[str, Any]:
        """Plain data for progress display and the run report."""
        now = self._clock.now()
        self._expire(now)
        rpm, tpm = self._rpm, self._tpm
        last = self._last_headers
        return {
            "rpm": rpm,
            "tpm": tpm,
            "rpm_source": limit_source(self._user_rpm, self._server_rpm),
            "tpm_source": limit_source(self._user_tpm, self._server_tpm),
            "burst_requests": None if rpm is None else self._cap_r,
            "burst_tokens": None if tpm is None else self._cap_t,
            "max_in_flight": self._target,
            "max_senders": self._conc.hard,
            "hold_seconds": None if self._conc.hold is None else round(self._conc.hold, 4),
            "request_rate": self._rate,
            "charge_model": self._charge.snapshot(),
            "in_flight": self._in_flight,
            "waiting": len(self._waiters),
            "requests_in_window": self._req60,
            "tokens_in_window": self._tok60,
            "requests_available": None if rpm is None else max(0.0, self._long_r - self._req60),
            "tokens_available": None if tpm is None else max(0.0, tpm - self._tok60),
            "paused_for": max(0.0, self._paused_until - now),
            "pauses": dict(self._pauses),
            "paused_seconds": self._paused_seconds,
            "corrections": self._n_corrections,
            "corrected_requests": self._corrected_r,
            "corrected_tokens": self._corrected_t,
            "invalid_headers": self._invalid_headers,
            "server": {
                "limit_requests": last.limit_requests,
                "limit_tokens": last.limit_tokens,
                "remaining_requests": last.remaining_requests,
                "remaining_tokens": last.remaining_tokens,
                "reset_requests": last.reset_requests,
                "reset_tokens": last.reset_tokens,
            },
        }

    # -------------------------------------------------------------- internals
    def _too_large(self, tokens: int, tpm: float) -> RequestTooLarge:
        return RequestTooLarge(
            f"one request needs up to {tokens} tokens (prompt + max_tokens) but the token limit "
            f"is {tpm:g} per minute, so it can never be sent: lower --max-tokens or raise --tpm"
        )

    def _grant_unlogged(self, tokens: int) -> Permit:
        p = Permit(tokens)
        self._in_flight += 1
        self._unlogged_r += 1
        self._unlogged_t += tokens
        self._charged_r += 1
        self._charged_t += tokens
        p._charged_r = self._charged_r
        p._charged_t = self._charged_t
        return p

    def _grant(self, now: float, tokens: int, asked: int, max_tokens: int) -> Permit:
        if not self._limited:
            return self._grant_unlogged(tokens)
        if self._conc.step(now, self._in_flight, False):
            self._period()
        p = Permit(tokens, asked, max_tokens)
        p.at = now
        self._log.append(p)
        self._held[p] = None
        self._in_flight += 1
        self._req60 += 1
        self._tok60 += tokens
        # _wait_time(now) just refilled both buckets to ``now``: take from them directly.
        if self._rpm is not None:
            self._rb_level -= 1.0
        if self._tpm is not None:
            self._tb_level -= tokens
        self._charged_r += 1
        self._charged_t += tokens
        self._grants += 1
        self._psum += p._p
        self._msum += max_tokens
        self._mean_tok += (tokens - self._mean_tok) * (0.02 if self._grants > 50 else
                                                      1.0 / self._grants)
        p._seq = self._grants
        p._psum = self._psum
        p._msum = self._msum
        p._used_r = self._req60
        p._used_t = self._tok60
        p._charged_r = self._charged_r
        p._charged_t = self._charged_t
        return p

    def _wait_time(self, now: float, tokens: int) -> float:
        """0.0 if ``tokens`` may go now, else seconds until it might (inf: until a release)."""
        if self._in_flight >= self._target and not self._slow_start():
            return _INF
        if self._paused_until:
            if now < self._paused_until:
                return self._paused_until - now
            self._paused_until = 0.0
        if not self._limited:
            return 0.0
        self._expire(now)
        wait = 0.0
        if self._rpm is not None:
            over = self._req60 + 1 - self._long_r
            if over > 0:
                wait = self._minute_wait(now, over, requests=True)
            # Request burst: a bucket, as providers enforce it. Its level is computed
            # from absolute times, so a timer that fires late loses nothing: the
            # refill it slept through is there for the next requests.
            level = self._rb_refill(now)
            if level < 1.0:
                wait = max(wait, (1.0 - level) * WINDOW / self._rpm + _TINY)
        if self._tpm is not None:
            over = self._tok60 + tokens - self._tpm
            if over > 0:
                wait = max(wait, self._minute_wait(now, over, requests=False))
            # Token burst: a bucket too. A request waits until the bucket holds its
            # tokens (one bigger than the bucket waits until it is full and goes
            # alone), so the burst is never overdrawn.
            level = self._tb_refill(now)
            need = min(float(tokens), self._cap_t)
            if level < need:
                wait = max(wait, (need - level) * WINDOW / self._tpm + _TINY)
        return wait if wait == 0.0 else max(wait, MIN_SLEEP)

    def _slow_start(self) -> bool:
        """In-flight cap reached before any hold time was measured: double it (if allowed)."""
        if self._rate is None or self._conc.hold is not None or self._target >= self._conc.hard:
            self._slot_waits += 1
            return False
        self._target = min(self._conc.hard, 2 * self._target)
        return self._in_flight < self._target

    def _period(self) -> None:
        """A measuring period closed: new binding rate, new in-flight target."""
        self._update_rate()
        self._retarget()

    def _update_rate(self) -> None:
        rates = []
        if self._rpm is not None:
            rates.append(self._rpm / WINDOW)
        if self._tpm is not None and self._mean_tok > 0:
            rates.append(self._tpm / WINDOW / self._mean_tok)
        self._rate = min(rates) if rates else None

    def _retarget(self) -> None:
        old = self._target
        if self._rate is None:
            cap = self._user_cap
            self._target = cap if cap is not None else min(self._conc.hard, CONC_START)
        else:
            self._target = self._conc.target(self._rate, old)
        if self._target > old and getattr(self, "_waiters", None):
            self._wake_head()

    def _apply_limits(self, now: float) -> None:
        """Recompute limits, burst shapes and window sums; fail waiters that can never fit."""
        rpm = min_limit(self._user_rpm, self._server_rpm)
        tpm = min_limit(self._user_tpm, self._server_tpm)
        newly = not self._limited and (rpm is not None or tpm is not None)
        self._rpm, self._tpm = rpm, tpm
        self._limited = rpm is not None or tpm is not None
        b = self._burst_seconds
        if rpm is not None:
            burst = rpm / WINDOW * b
            # Smooth (after a requests 429): a quarter of the burst, but at least 2, so
            # a late timer is still made up by the next request (a bucket of 1 cannot).
            self._cap_r = (max(2, math.floor(burst * SMOOTH)) if self._smooth_r
                           else max(1, math.floor(burst)))
            self._long_r = max(1.0, rpm)
        else:
            self._cap_r, self._long_r = _INF, _INF
        self._cap_t = tpm / WINDOW * b if tpm is not None else _INF
        self._rebuild(now)
        if newly and (self._unlogged_r or self._unlogged_t):
            # Requests granted before any limit was known are in flight unlogged:
            # count them for a minute rather than pretend they were never sent.
            self._charge_correction(now + WINDOW, self._unlogged_r, self._unlogged_t)
        if tpm is not None:
            for w in [w for w in self._waiters if w.tokens > tpm]:
                self._waiters.remove(w)
                w.disarm()
                if w.fut is not None and not w.fut.done():
                    w.fut.set_exception(self._too_large(w.tokens, tpm))
        self._update_rate()
        self._retarget()
        self._wake_head()
