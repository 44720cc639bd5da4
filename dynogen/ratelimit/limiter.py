"""Run at an API's limits and never past them.

``Limiter`` enforces, together: requests per minute, tokens per minute, and a
cap on requests in flight. We do not use ``aiolimiter`` or ``asyncio-throttle``
directly: each is one bucket of one resource, and neither can refund the unused
part of a reservation, hold every sender back after a 429, or follow what the
server's headers say about its limits. The shape (``__slots__``, FIFO waiters,
time from one injected clock, refusing an amount that can never fit) is
aiolimiter's.

How pacing works
    Every granted request is logged with its time, its one request and its
    reserved tokens (prompt + max_tokens). A request may go when both *sliding
    windows* still have room:

    * the minute window: at most ``rpm`` requests and ``tpm`` tokens in any 60 s;
    * the burst: at most about ``burst_seconds`` worth of the rate at once, so a
      minute's allowance is never fired at once (providers enforce per-minute
      limits at a finer grain). For requests it is a whole number
      ``floor(rpm/60 * burst_seconds)`` (at least 1) over a window stretched to
      keep the full rate. For tokens it is a bucket of ``tpm/60 * burst_seconds``
      refilled continuously at ``tpm/60`` per second — the way providers enforce
      it, so a client that follows it is never refused: a request waits until the
      bucket holds its tokens, and one bigger than the bucket waits until it is
      full and leaves it in debt. (A sliding window that let a request start while
      not yet full gained rate against itself but overdrew a provider's bucket:
      half the requests of a TPM-bound run were answered 429.)

    Windows start empty and the bucket full, so a run goes at full speed from its
    first second, and the counts can be checked by anyone: no 60 s window ever
    holds more than the limit, no request burst window more than the burst, and
    no second more tokens than a full bucket plus a second of refill.

Refunds
    ``release(permit, used_tokens)`` replaces the reservation by what was used,
    in every window the request still counts in. ``used_tokens=0`` means the
    request never counted against the server (not sent, refused): the request
    and all its tokens come back. ``None`` keeps the whole reservation (we do
    not know what was used, e.g. after a timeout).

Following the server's headers (``observe_headers``)
    * ``x-ratelimit-limit-*``: the limit in force is ``min(user's, server's)``;
      a server limit is learned from the first answer that carries one, and a
      lower one later is adopted at once.
    * ``x-ratelimit-remaining-*`` can only *lower* our room, never raise it, and
      it is judged as of when the answered request was granted: the server saw
      at most our usage then plus everything we granted since. Any usage it
      reports beyond that (another client on the same key, a different way of
      counting) is charged as a correction that expires when the server's reset
      header says (at most 60 s later). Later answers for requests granted
      before the correction see it among "everything granted since", so one
      discrepancy is never charged twice; and a stale header (requests still
      in flight) can only make the server look *less* used, so it can never
      trigger a correction. Corrections under 1 % of the limit are ignored as noise.
      A server that counts reservations and ignores refunds (OpenAI documents
      max_tokens-based counting) shows up the same way, so its count is adopted.
      What other clients send while none of our answers arrive is learned from
      the next answer, or from a 429.
      Pass the answered request's ``permit``; without it the oldest request in
      flight stands in for it, which can only under-correct as long as
      ``observe_headers`` is called before that request's ``release``.

429s
    ``pause(seconds, kind)`` holds back every sender until then; afterwards the
    windows alone decide, so sending resumes at full speed. A tokens 429 also
    empties our token bucket (the server's is empty, so ours cannot be fuller),
    and a requests 429 makes request pacing smooth — one per ``60/rpm`` seconds,
    still the full rate — so a pause is not followed by a burst refused again.

Cost
    ``acquire`` with room available creates no future and takes no lock; only
    waiters create futures. With no rpm/tpm it only counts in-flight requests.
    Measured (CPython 3.11, 2 cores): an acquire+release pair costs about
    0.6 us without limits and 2.3 us with them; a grant that had to wait, 7 us.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final

from dynogen.errors import ConfigError, UserError
from dynogen.ratelimit.clock import Clock, MonotonicClock
from dynogen.ratelimit.headers import RateLimitHeaders, parse_rate_limit_headers

__all__ = ["KINDS", "WINDOW", "Limiter", "Permit", "RequestTooLarge"]

WINDOW: Final = 60.0  # seconds: the "per minute" of rpm and tpm
KINDS: Final = ("requests", "tokens", "unknown")
DEADBAND: Final = 0.01  # header corrections below this fraction of the limit are noise
_MIN_SLEEP: Final = 1e-6  # never arm a timer shorter than this (float rounding at wake-up)
_INF: Final = math.inf


class RequestTooLarge(UserError, ValueError):
    """One request's worst case exceeds the token limit, so it could never be sent."""


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


class Permit:
    """A granted request: one in-flight slot, one request and ``tokens`` reserved tokens.

    Hand it back with ``Limiter.release(permit, used_tokens)``.
    """

    __slots__ = ("tokens", "at", "used_tokens", "_req", "_tok", "_used_r", "_used_t",
                 "_charged_r", "_charged_t", "_released")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens  # reserved at acquire
        self.at: float | None = None  # when granted, if logged (some limit was set)
        self.used_tokens: int | None = None  # for ``async with limiter.reserve(...)``
        self._req = 1  # what the windows hold for it now
        self._tok = tokens
        self._used_r = 0  # our minute-window usage just after granting it
        self._used_t = 0
        self._charged_r = 0  # running totals of everything charged, just after it
        self._charged_t = 0
        self._released = False

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Permit tokens={self.tokens} at={self.at} {state}>"


class _Correction:
    """Usage the server reported beyond ours: counts in the minute window until ``until``."""

    __slots__ = ("until", "req", "tok")

    def __init__(self, until: float, req: int, tok: int) -> None:
        self.until = until
        self.req = req
        self.tok = tok

    def __lt__(self, other: _Correction) -> bool:
        return self.until < other.until


class _Waiter:
    __slots__ = ("tokens", "fut", "timer", "wake_at")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.fut: asyncio.Future[None] | None = None
        self.timer: asyncio.Task[None] | None = None
        self.wake_at = _INF

    def wake(self, _: object = None) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def arm(self, clock: Clock, now: float, delay: float) -> None:
        """Make sure something wakes us by ``now + delay`` (an earlier timer already does)."""
        when = now + delay
        timer = self.timer
        if timer is not None and not timer.done():
            if self.wake_at <= when:
                return
            timer.cancel()
        self.wake_at = when
        self.timer = asyncio.ensure_future(clock.sleep(max(delay, _MIN_SLEEP)))
        self.timer.add_done_callback(self.wake)

    def disarm(self) -> None:
        if self.timer is not None and not self.timer.done():
            self.timer.cancel()
        self.timer = None


def _min_limit(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _check_limit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"--{name} must be a positive number (got {value})")
    return float(value)


class Limiter:
    """Requests/minute, tokens/minute and in-flight cap, paced and steered by server headers.

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
        "_clock", "_burst_seconds", "_max_in_flight", "_in_flight", "_unlogged_r", "_unlogged_t",
        "_user_rpm", "_user_tpm", "_server_rpm", "_server_tpm", "_rpm", "_tpm", "_limited",
        "_cap_r", "_cap_t", "_long_r", "_win_r", "_win_t",
        "_log", "_seen", "_h_long", "_h_r", "_h_t", "_req60", "_tok60", "_req_burst", "_tok_burst",
        "_corrections", "_charged_r", "_charged_t", "_held",
        "_waiters", "_paused_until", "_pauses", "_paused_seconds",
        "_n_corrections", "_corrected_r", "_corrected_t", "_invalid_headers", "_last_headers",
        "_floor", "_tb_level", "_tb_time", "_smooth_r",
    )

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 max_in_flight: int = 64, *, burst_seconds: float = 1.0,
                 clock: Clock | None = None) -> None:
        if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
            raise ConfigError(f"burst_seconds must be a positive number (got {burst_seconds})")
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._burst_seconds = float(burst_seconds)
        self._max_in_flight = 1
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._unlogged_r = 0  # in flight, granted while no limit was known
        self._unlogged_t = 0
        self._user_rpm = _check_limit("rpm", rpm)
        self._user_tpm = _check_limit("tpm", tpm)
        self._server_rpm: float | None = None
        self._server_tpm: float | None = None
        self._rpm: float | None = None
        self._tpm: float | None = None
        self._limited = False
        self._cap_r = _INF  # burst capacity (requests) and its window
        self._win_r = 0.0
        self._cap_t = _INF  # burst capacity (tokens) and its window
        self._win_t = 0.0
        self._long_r = _INF  # minute capacity in requests (at least one)
        self._log: list[Permit] = []
        self._floor = -_INF  # grants before this no longer count in the minute window
        self._smooth_r = False  # after a requests 429: one request per 60/rpm seconds
        self._tb_level = 0.0  # token burst: a bucket refilled at tpm/60 per second
        self._tb_time = -_INF
        self._seen = -_INF  # clock time the window heads and sums are current for
        self._h_long = 0  # first log entry still in the minute window
        self._h_r = 0  # ... in the requests burst window
        self._h_t = 0  # ... in the tokens burst window
        self._req60 = 0
        self._tok60 = 0
        self._req_burst = 0
        self._tok_burst = 0
        self._corrections: list[_Correction] = []  # sorted by expiry
        self._charged_r = 0  # running totals: every grant and correction ever charged
        self._charged_t = 0
        self._held: dict[Permit, None] = {}  # logged permits in flight, oldest first
        self._waiters: deque[_Waiter] = deque()
        self._paused_until = 0.0
        self._pauses = dict.fromkeys(KINDS, 0)
        self._paused_seconds = 0.0
        self._n_corrections = 0
        self._corrected_r = 0
        self._corrected_t = 0
        self._invalid_headers = 0
        self._last_headers = RateLimitHeaders()
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
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"--max-in-flight must be a whole number of at least 1 (got {value})")
        self._max_in_flight = value
        if getattr(self, "_waiters", None):
            self._wake_head()

    @property
    def paused_until(self) -> float | None:
        """Clock time until which every sender is held back after a 429, or ``None``."""
        if self._paused_until and self._clock.now() < self._paused_until:
            return self._paused_until
        return None

    # ---------------------------------------------------------------- acquire
    async def acquire(self, tokens: int) -> Permit:
        """Wait for an in-flight slot, one request and ``tokens`` tokens of room; FIFO."""
        if not tokens >= 0:
            raise ValueError(f"a request cannot reserve a negative number of tokens ({tokens})")
        tpm = self._tpm
        if tpm is not None and tokens > tpm:
            raise self._too_large(tokens, tpm)
        if not self._waiters and self._in_flight < self._max_in_flight:
            if not self._limited and not self._paused_until:
                return self._grant_unlogged(tokens)
            now = self._clock.now()
            if self._wait_time(now, tokens) == 0.0:
                return self._grant(now, tokens)
        return await self._wait(tokens)

    def reserve(self, tokens: int) -> _Reservation:
        """``async with limiter.reserve(n) as permit:`` acquire, then release on exit.

        Set ``permit.used_tokens`` inside the block to refund the rest; left
        unset, the whole reservation is kept.
        """
        return _Reservation(self, tokens)

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
        self._in_flight -= 1
        if permit.at is None:
            self._unlogged_r -= 1
            self._unlogged_t -= permit.tokens
        else:
            del self._held[permit]
            if used_tokens is not None:
                if used_tokens == 0:
                    self._adjust(permit, -permit._req, -permit._tok)
                elif used_tokens != permit._tok:
                    self._adjust(permit, 0, used_tokens - permit._tok)
        if self._waiters:
            self._wake_head()

    # ------------------------------------------------------------ server side
    def observe_headers(self, headers: Mapping[str, str], permit: Permit | None = None) -> None:
        """Learn from one answer's headers (every answer, 2xx or 429). See the module docstring."""
        info = parse_rate_limit_headers(headers)
        if info.invalid:
            self._invalid_headers += len(info.invalid)
        if info.empty:
            return
        self._last_headers = info
        now = self._clock.now()
        newly = not self._limited
        pre_r, pre_t = self._charged_r, self._charged_t  # before learning limits charges anything
        changed = False
        if info.limit_requests is not None and info.limit_requests != self._server_rpm:
            self._server_rpm = info.limit_requests
            changed = True
        if info.limit_tokens is not None and info.limit_tokens != self._server_tpm:
            self._server_tpm = info.limit_tokens
            changed = True
        if changed:
            old_rpm, old_tpm = self._rpm, self._tpm
            new_rpm = _min_limit(self._user_rpm, self._server_rpm)
            new_tpm = _min_limit(self._user_tpm, self._server_tpm)
            if (old_rpm is not None and new_rpm is not None and new_rpm < old_rpm) or (
                    old_tpm is not None and new_tpm is not None and new_tpm < old_tpm):
                # The server lowered its limit. Providers enforce it as a refilling
                # bucket, so a minute of history sent at the old rate is not held
                # against us: keep only the last burst, and let the server's
                # remaining headers (corrections) and 429s say if it counts more.
                self._floor = now - self._burst_seconds
            self._apply_limits(now)
        if not self._limited:
            return
        # The request this answer is about, as we saw things when granting it.
        ref = permit if permit is not None and permit.at is not None else None
        if ref is None and self._held:
            ref = next(iter(self._held))
        add_r = add_t = 0
        if self._rpm is not None and info.remaining_requests is not None:
            limit = info.limit_requests if info.limit_requests is not None else self._rpm
            add_r = self._excess(limit - info.remaining_requests, ref, permit, newly, self._rpm,
                                 pre_r, requests=True)
        if self._tpm is not None and info.remaining_tokens is not None:
            limit = info.limit_tokens if info.limit_tokens is not None else self._tpm
            add_t = self._excess(limit - info.remaining_tokens, ref, permit, newly, self._tpm,
                                 pre_t, requests=False)
        if add_r or add_t:
            resets = [r for r, a in ((info.reset_requests, add_r), (info.reset_tokens, add_t))
                      if a and r is not None]
            life = min(WINDOW, max(resets)) if resets else WINDOW
            self._n_corrections += 1
            self._corrected_r += add_r
            self._corrected_t += add_t
            self._charge_correction(now + life, add_r, add_t)

    def _excess(self, server_used: float, ref: Permit | None, permit: Permit | None,
                newly: bool, limit: float, charged: int, *, requests: bool) -> int:
        """Usage the server reports beyond anything we can account for (0 if none)."""
        if ref is not None:
            ours = ref._used_r if requests else ref._used_t
            since = charged - (ref._charged_r if requests else ref._charged_t)
            deficit = server_used - ours - since
            return math.ceil(deficit) if deficit > max(1.0, DEADBAND * limit) else 0
        if not newly:
            return 0
        # Limits just learned: nothing was logged. The server's count plus what
        # we granted after the answered request is our usage; the requests in
        # flight are already charged (see _apply_limits), so add only the rest.
        unlogged = self._unlogged_r if requests else self._unlogged_t
        if permit is not None:
            since = charged - (permit._charged_r if requests else permit._charged_t)
        else:
            since = unlogged
        return max(0, math.ceil(server_used + since - unlogged))

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
        elif kind == "requests" and self._rpm is not None and not self._smooth_r:
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
            "rpm_source": _source(self._user_rpm, self._server_rpm),
            "tpm_source": _source(self._user_tpm, self._server_tpm),
            "burst_requests": None if rpm is None else self._cap_r,
            "burst_tokens": None if tpm is None else self._cap_t,
            "max_in_flight": self._max_in_flight,
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

    def _grant(self, now: float, tokens: int) -> Permit:
        if not self._limited:
            return self._grant_unlogged(tokens)
        p = Permit(tokens)
        p.at = now
        self._log.append(p)
        self._held[p] = None
        self._in_flight += 1
        self._req60 += 1
        self._tok60 += tokens
        self._req_burst += 1
        self._tok_burst += tokens
        if self._tpm is not None:
            self._tb_level = self._tb_refill(now) - tokens
        self._charged_r += 1
        self._charged_t += tokens
        p._used_r = self._req60
        p._used_t = self._tok60
        p._charged_r = self._charged_r
        p._charged_t = self._charged_t
        return p

    def _wait_time(self, now: float, tokens: int) -> float:
        """0.0 if ``tokens`` may go now, else seconds until it might (inf: until a release)."""
        if self._in_flight >= self._max_in_flight:
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
            over = self._req_burst + 1 - self._cap_r
            if over > 0:
                wait = max(wait, self._burst_wait(now, over, self._h_r, self._win_r, True))
        if self._tpm is not None:
            over = self._tok60 + tokens - self._tpm
            if over > 0:
                wait = max(wait, self._minute_wait(now, over, requests=False))
            # Token burst: a bucket, as providers enforce it. A request waits until
            # the bucket holds its tokens (one bigger than the bucket waits until it
            # is full and goes alone), so the burst is never overdrawn.
            level = self._tb_refill(now)
            need = min(float(tokens), self._cap_t)
            if level < need:
                wait = max(wait, (need - level) * WINDOW / self._tpm)
        return wait if wait == 0.0 else max(wait, _MIN_SLEEP)

    def _minute_wait(self, now: float, over: float, *, requests: bool) -> float:
        """Seconds until ``over`` units have left the minute window (log and corrections)."""
        log = self._log
        entries = ((p.at + WINDOW, p._req if requests else p._tok)  # type: ignore[operator]
                   for p in (log[i] for i in range(self._h_long, len(log))))
        fixes = ((c.until, c.req if requests else c.tok) for c in self._corrections)
        freed = 0
        for when, amount in heapq.merge(entries, fixes):
            freed += amount
            if freed >= over:
                return when - now
        return _INF

    def _burst_wait(self, now: float, over: float, head: int, window: float,
                    requests: bool) -> float:
        """Seconds until more than ``over`` (requests: at least ``over``) has left the window."""
        log = self._log
        freed = 0
        for i in range(head, len(log)):
            p = log[i]
            freed += p._req if requests else p._tok
            if freed > over or (requests and freed >= over):
                return p.at + window - now  # type: ignore[operator]
        return _INF

    async def _wait(self, tokens: int) -> Permit:
        loop = asyncio.get_running_loop()
        w = _Waiter(tokens)
        self._waiters.append(w)
        try:
            while True:
                w.fut = loop.create_future()
                if self._waiters[0] is w:
                    now = self._clock.now()
                    delay = self._wait_time(now, tokens)
                    if delay == 0.0:
                        self._waiters.popleft()
                        w.disarm()
                        permit = self._grant(now, tokens)
                        if self._waiters:
                            self._wake_head()
                        return permit
                    if delay != _INF:
                        w.arm(self._clock, now, delay)
                await w.fut
        except BaseException:
            w.disarm()
            if self._waiters and self._waiters[0] is w:
                self._waiters.popleft()
                self._wake_head()
            elif w in self._waiters:
                self._waiters.remove(w)
            raise

    def _wake_head(self) -> None:
        if self._waiters:
            self._waiters[0].wake()

    def _expire(self, now: float) -> None:
        self._seen = now
        log = self._log
        n = len(log)
        i = start = self._h_long
        while i < n and log[i].at + WINDOW <= now:  # type: ignore[operator]
            p = log[i]
            self._req60 -= p._req
            self._tok60 -= p._tok
            i += 1
        if i != start:
            self._h_long = i
        i, w = self._h_r, self._win_r
        while i < n and log[i].at + w <= now:  # type: ignore[operator]
            self._req_burst -= log[i]._req
            i += 1
        self._h_r = i
        i, w = self._h_t, self._win_t
        while i < n and log[i].at + w <= now:  # type: ignore[operator]
            self._tok_burst -= log[i]._tok
            i += 1
        self._h_t = i
        fixes = self._corrections
        while fixes and fixes[0].until <= now:
            c = fixes.pop(0)
            self._req60 -= c.req
            self._tok60 -= c.tok
        if self._h_long > 4096 and (head := min(self._h_long, self._h_r, self._h_t)) * 2 > n:
            del log[:head]
            self._h_long -= head
            self._h_r -= head
            self._h_t -= head

    def _adjust(self, p: Permit, dr: int, dt: int) -> None:
        """Change what a logged request holds, in each window it still counts in.

        Membership is judged at the time the heads were last moved to, which is
        exactly "at or after the head"; no need to read the clock.
        """
        now = self._seen
        at: float = p.at  # type: ignore[assignment]
        if at + WINDOW > now and at >= self._floor:
            self._req60 += dr
            self._tok60 += dt
        if at + self._win_r > now:
            self._req_burst += dr
        if at + self._win_t > now:
            self._tok_burst += dt
        if dt and self._tpm is not None:
            self._tb_level = min(self._cap_t, self._tb_refill(now) - dt)
        p._req += dr
        p._tok += dt

    def _tb_refill(self, now: float) -> float:
        """The token bucket's level at ``now`` (refilled since it was last read)."""
        tpm = self._tpm
        if tpm is None:
            return _INF
        if self._tb_time == -_INF:
            self._tb_level = self._cap_t  # starts full: full speed from the first second
        elif now > self._tb_time:
            self._tb_level = min(self._cap_t, self._tb_level + (now - self._tb_time) * tpm / WINDOW)
        self._tb_time = max(self._tb_time, now)
        return self._tb_level

    def _charge_correction(self, until: float, req: int, tok: int) -> None:
        bisect.insort(self._corrections, _Correction(until, req, tok))
        self._req60 += req
        self._tok60 += tok
        self._charged_r += req
        self._charged_t += tok

    def _apply_limits(self, now: float) -> None:
        """Recompute limits, burst shapes and window sums; fail waiters that can never fit."""
        rpm = _min_limit(self._user_rpm, self._server_rpm)
        tpm = _min_limit(self._user_tpm, self._server_tpm)
        newly = not self._limited and (rpm is not None or tpm is not None)
        self._rpm, self._tpm = rpm, tpm
        self._limited = rpm is not None or tpm is not None
        b = self._burst_seconds
        if rpm is not None:
            rate = rpm / WINDOW
            self._cap_r = 1 if self._smooth_r else max(1, math.floor(rate * b))
            self._win_r = self._cap_r / rate
            self._long_r = max(1.0, rpm)
        else:
            self._cap_r, self._win_r, self._long_r = _INF, 0.0, _INF
        if tpm is not None:
            self._cap_t = tpm / WINDOW * b
            self._win_t = b
        else:
            self._cap_t, self._win_t = _INF, 0.0
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
        self._wake_head()

    def _rebuild(self, now: float) -> None:
        """Recount every window from the log (limits changed, so burst windows may have too)."""
        log = self._log
        self._seen = now

        def head(window: float) -> int:
            return bisect.bisect_right([p.at + window for p in log], now)  # type: ignore[operator]

        floor = bisect.bisect_left([p.at for p in log], self._floor)  # type: ignore[type-var]
        self._h_long = max(head(WINDOW), floor)
        self._h_r, self._h_t = head(self._win_r), head(self._win_t)
        fixes = [c for c in self._corrections if c.until > now]
        self._corrections = fixes
        self._req60 = sum(p._req for p in _tail(log, self._h_long)) + sum(c.req for c in fixes)
        self._tok60 = sum(p._tok for p in _tail(log, self._h_long)) + sum(c.tok for c in fixes)
        self._req_burst = sum(p._req for p in _tail(log, self._h_r))
        self._tok_burst = sum(p._tok for p in _tail(log, self._h_t))
        if self._tpm is not None and self._tb_time != -_INF:
            # New limits, new bucket: never fuller than it now holds, and a debt run
            # up under the old limit is not carried over whole (the minute window
            # still counts those tokens).
            self._tb_level = max(-self._cap_t, min(self._tb_level, self._cap_t))


def _tail(log: list[Permit], start: int) -> Iterator[Permit]:
    return (log[i] for i in range(start, len(log)))


def _source(user: float | None, server: float | None) -> str | None:
    if user is None and server is None:
        return None
    if server is None or (user is not None and user <= server):
        return "user"
    return "server"


class _Reservation:
    __slots__ = ("_limiter", "_tokens", "_permit")

    def __init__(self, limiter: Limiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        self._permit = await self._limiter.acquire(self._tokens)
        return self._permit

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._permit is not None:
            self._limiter.release(self._permit, self._permit.used_tokens)
