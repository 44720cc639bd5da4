"""Run at an API's limits and never past them.

``Limiter`` enforces, together: requests per minute, tokens per minute, and a
cap on requests in flight that follows the limits (Little's law, see below).
We do not use ``aiolimiter`` or ``asyncio-throttle`` directly: each is one
bucket of one resource, and neither can refund the unused part of a
reservation, hold every sender back after a 429, or follow what the server's
headers say about its limits. The shape (``__slots__``, FIFO waiters,
time from one injected clock, refusing an amount that can never fit) is
aiolimiter's.

The parts (``Limiter`` is the one class callers use; it owns one of each and
delegates, and each part changes its own state only)
    * ``pacing.Pacing`` — the minute window, the burst buckets, refunds and
      corrections: whether a request fits the limits in force, and when it will;
    * ``following.Following`` — what the server's headers and 429 bodies teach:
      its limits, usage beyond ours, its charge per request;
    * ``waiters.WaitQueue`` — the FIFO of requests that must wait (futures, timers);
    * ``calibrate.Concurrency`` and ``calibrate.ChargeModel`` — the in-flight
      target's hold time and the server's charge per request;
    * ``permit`` — the grant record (a plain dataclass every part reads) and the one
      outright refusal; ``senders`` — the hard in-flight cap from the open-files limit;
    * here — ``acquire``/``release``, the in-flight target, 429 pauses and the
      limits in force (the lower of the user's and the server's).

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
from collections.abc import Mapping
from typing import Any, Final

from dynogen.errors import ConfigError
from dynogen.ratelimit.calibrate import START as CONC_START
from dynogen.ratelimit.calibrate import ChargeModel, Concurrency
from dynogen.ratelimit.clock import Clock, MonotonicClock
from dynogen.ratelimit.following import Following, limit_source, lowered, min_limit
from dynogen.ratelimit.headers import parse_rate_limit_headers
from dynogen.ratelimit.pacing import WINDOW, Pacing
from dynogen.ratelimit.permit import Permit, RequestTooLarge, Reservation
from dynogen.ratelimit.senders import AUTO_MAX_SENDERS, auto_max_senders
from dynogen.ratelimit.waiters import MIN_SLEEP, Waiter, WaitQueue

__all__ = ["AUTO_MAX_SENDERS", "KINDS", "WINDOW", "Limiter", "Permit", "RequestTooLarge",
           "auto_max_senders"]

KINDS: Final = ("requests", "tokens", "unknown")
_INF: Final = math.inf


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


def _too_large(tokens: int, tpm: float) -> RequestTooLarge:
    return RequestTooLarge(
        f"one request needs up to {tokens} tokens (prompt + max_tokens) but the token limit "
        f"is {tpm:g} per minute, so it can never be sent: lower --max-tokens or raise --tpm")


class Limiter:
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

    __slots__ = (
        "_clock", "_burst_seconds", "_user_cap", "_target", "_conc", "_in_flight",
        "_unlogged_r", "_unlogged_t", "_user_rpm", "_user_tpm", "_rpm", "_tpm", "_limited",
        "_rate", "_mean_tok", "_charge", "_grants", "_psum", "_msum",
        "_held", "_queue", "_waiting", "_paused_until", "_pauses", "_paused_seconds",
        "_smooth_r", "_charged_r", "_charged_t", "_pacing", "_following",
    )

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 max_in_flight: int | None = None, *, burst_seconds: float = 1.0,
                 clock: Clock | None = None) -> None:
        if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
            raise ConfigError(f"burst_seconds must be a positive number (got {burst_seconds})")
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._burst_seconds = float(burst_seconds)
        self._charge = ChargeModel()
        self._pacing = Pacing()  # the window and buckets start empty
        self._following = Following(self._charge)
        self._queue = WaitQueue()
        # The queue's own deque, read (never changed) here: "is anyone waiting?" is
        # asked on every acquire and release, and a truth test on a deque is cheapest.
        self._waiting = self._queue.fifo
        self._user_cap: int | None = None
        # The CPU guard reads the process's CPU time against the clock: real clocks only.
        self._conc = Concurrency(auto_max_senders(),
                                 time.process_time if isinstance(self._clock, MonotonicClock)
                                 else None)
        self._target = 1
        self._rate: float | None = None  # binding requests/s (None: no limit known)
        self._mean_tok = 0.0  # tokens reserved per request, smoothed (for a TPM-bound rate)
        self._grants = 0
        self._psum = 0.0
        self._msum = 0.0
        self._in_flight = 0
        self.max_in_flight = max_in_flight
        self._unlogged_r = 0  # in flight, granted while no limit was known
        self._unlogged_t = 0
        self._charged_r = 0  # running totals: every grant and correction ever charged
        self._charged_t = 0
        self._user_rpm = _check_limit("rpm", rpm)
        self._user_tpm = _check_limit("tpm", tpm)
        self._rpm: float | None = None  # the limits in force (``_apply_limits`` sets them)
        self._tpm: float | None = None
        self._limited = False
        self._smooth_r = False  # after a requests 429: one request per 60/rpm seconds
        self._held: dict[Permit, None] = {}  # logged permits in flight, oldest first
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
        return len(self._waiting)

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
            raise _too_large(charge, tpm)
        if not self._waiting and self._in_flight < self._target:
            if not self._limited and not self._paused_until:
                return self._grant_unlogged(charge)
            now = self._clock.now()
            # A slot is free: unless paused, the windows alone decide (_wait_time, shortened).
            wait = (self._wait_time(now, charge) if self._paused_until
                    else self._pacing.wait(now, charge))
            if wait == 0.0:
                return self._grant(now, charge, tokens, max_tokens)
        return await self._queue.wait(Waiter(charge, tokens, max_tokens), self._admit)

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
        if permit.released:
            raise RuntimeError(f"{permit!r} was released twice")
        if used_tokens is not None and not used_tokens >= 0:
            raise ValueError(f"used_tokens must be 0 or more (got {used_tokens})")
        permit.released = True
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
                    self._pacing.adjust(permit, -permit.counted_requests, -permit.counted_tokens)
                elif used_tokens != permit.counted_tokens:
                    self._pacing.adjust(permit, 0, used_tokens - permit.counted_tokens)
        if self._waiting:
            self._queue.wake_head()

    # ------------------------------------------------------ what answers say
    def observe_headers(self, headers: Mapping[str, str], permit: Permit | None = None) -> None:
        """Learn from one answer's headers (every answer, 2xx or 429); see ``following``."""
        info = parse_rate_limit_headers(headers)
        following = self._following
        changed = following.note(info)
        if changed is None:
            return
        now = self._clock.now()
        newly = not self._limited
        # Before learning limits charges anything (requests in flight, unlogged).
        charged_r, charged_t = self._charged_r, self._charged_t
        if changed:
            rpm = min_limit(self._user_rpm, following.server_rpm)
            tpm = min_limit(self._user_tpm, following.server_tpm)
            if lowered(self._rpm, rpm) or lowered(self._tpm, tpm):
                # The server lowered its limit. Providers enforce it as a refilling
                # bucket, so a minute of history sent at the old rate is not held
                # against us: keep only the last burst, and let the server's
                # remaining headers (corrections) and 429s say if it counts more.
                self._pacing.forget_before(now - self._burst_seconds)
            self._apply_limits(now)
        if not self._limited:
            return
        # The request this answer is about, as we saw things when granting it.
        ref = permit if permit is not None and permit.at is not None else None
        if ref is None and self._held:
            ref = next(iter(self._held))
        fix = following.learn_usage(info, permit, ref, newly, self._rpm, self._tpm, charged_r,
                                    charged_t, self._unlogged_r, self._unlogged_t)
        if fix is not None:
            self._correct(now + fix[0], fix[1], fix[2])

    def observe_refusal(self, permit: Permit, body: bytes) -> None:
        """A 429's body: OpenAI's says what this request is charged (``Requested N``)."""
        self._following.observe_refusal(permit, body)

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
            self._pacing.drain_tokens(now)
        elif kind == "requests" and self._rpm is not None:
            self._pacing.drain_requests(now)
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
        pacing, following = self._pacing, self._following
        pacing.expire(now)
        rpm, tpm = self._rpm, self._tpm
        return {
            "rpm": rpm,
            "tpm": tpm,
            "rpm_source": limit_source(self._user_rpm, following.server_rpm),
            "tpm_source": limit_source(self._user_tpm, following.server_tpm),
            "burst_requests": None if rpm is None else pacing.burst_requests,
            "burst_tokens": None if tpm is None else pacing.burst_tokens,
            "max_in_flight": self._target,
            "max_senders": self._conc.hard,
            "hold_seconds": None if self._conc.hold is None else round(self._conc.hold, 4),
            "request_rate": self._rate,
            "charge_model": self._charge.snapshot(),
            "in_flight": self._in_flight,
            "waiting": len(self._waiting),
            "requests_in_window": pacing.requests_in_window,
            "tokens_in_window": pacing.tokens_in_window,
            "requests_available": None if rpm is None else max(
                0.0, pacing.minute_requests - pacing.requests_in_window),
            "tokens_available": None if tpm is None else max(0.0, tpm - pacing.tokens_in_window),
            "paused_for": max(0.0, self._paused_until - now),
            "pauses": dict(self._pauses),
            "paused_seconds": self._paused_seconds,
            **following.snapshot(),
        }

    # -------------------------------------------------------------- internals
    def _grant_unlogged(self, tokens: int) -> Permit:
        self._in_flight += 1
        self._unlogged_r += 1
        self._unlogged_t += tokens
        self._charged_r += 1
        self._charged_t += tokens
        return Permit(tokens, self._charged_r, self._charged_t)

    def _grant(self, now: float, tokens: int, asked: int, max_tokens: int) -> Permit:
        if not self._limited:
            return self._grant_unlogged(tokens)
        if self._conc.step(now, self._in_flight, False):
            self._period()
        self._grants = seq = self._grants + 1
        prompt = asked - max_tokens
        self._psum += prompt
        self._msum += max_tokens
        self._mean_tok += (tokens - self._mean_tok) * (0.02 if seq > 50 else 1.0 / seq)
        self._charged_r += 1
        self._charged_t += tokens
        p = Permit(tokens, self._charged_r, self._charged_t, now, prompt, max_tokens, seq,
                   self._psum, self._msum, 1, tokens)
        self._pacing.grant(now, p)
        self._held[p] = None
        self._in_flight += 1
        return p

    def _correct(self, until: float, req: int, tok: int) -> None:
        """Charge usage beyond our grants to the minute window until ``until``."""
        self._pacing.correct(until, req, tok)
        self._charged_r += req
        self._charged_t += tok

    def _admit(self, w: Waiter) -> Permit | None:
        """The head of the queue: grant it if it may go now, else arm its timer (``None``)."""
        if self._charge.ready:
            # The charge as known now: a request queued before the server's
            # charge was learned must not go on reserving the old count.
            w.tokens = self._charge.charge(w.asked, w.max_tokens)
            if self._tpm is not None and w.tokens > self._tpm:
                w.tokens = math.floor(self._tpm)  # goes alone, a full bucket
        now = self._clock.now()
        delay = self._wait_time(now, w.tokens)
        if delay == 0.0:
            return self._grant(now, w.tokens, w.asked, w.max_tokens)
        if delay != _INF:
            w.arm(self._clock, now, delay)
        return None

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
        wait = self._pacing.wait(now, tokens)
        return wait if wait == 0.0 else max(wait, MIN_SLEEP)

    def _slow_start(self) -> bool:
        """In-flight cap reached before any hold time was measured: double it (if allowed)."""
        if self._rate is None or self._conc.hold is not None or self._target >= self._conc.hard:
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
        if self._target > old:
            self._queue.wake_head()

    def _apply_limits(self, now: float) -> None:
        """Recompute the limits in force; fail waiters that can never fit."""
        rpm = min_limit(self._user_rpm, self._following.server_rpm)
        tpm = min_limit(self._user_tpm, self._following.server_tpm)
        newly = not self._limited and (rpm is not None or tpm is not None)
        self._rpm, self._tpm = rpm, tpm
        self._limited = rpm is not None or tpm is not None
        self._pacing.configure(now, rpm, tpm, self._burst_seconds, self._smooth_r)
        if newly and (self._unlogged_r or self._unlogged_t):
            # Requests granted before any limit was known are in flight unlogged:
            # count them for a minute rather than pretend they were never sent.
            self._correct(now + WINDOW, self._unlogged_r, self._unlogged_t)
        if tpm is not None:
            self._queue.fail_where(lambda w: w.tokens > tpm, lambda w: _too_large(w.tokens, tpm))
        self._update_rate()
        self._retarget()
        self._queue.wake_head()

