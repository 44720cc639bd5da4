"""Run at an API's limits and never past them.

``Limiter`` enforces, together: requests per minute, tokens per minute, and a
cap on requests in flight that follows the limits (Little's law, see below).
We do not use ``aiolimiter`` or ``asyncio-throttle`` directly: each is one
bucket of one resource, and neither can refund the unused part of a
reservation, hold every sender back after a 429, or follow what the server's
headers say about its limits. The shape (``__slots__``, FIFO waiters,
time from one injected clock, refusing an amount that can never fit) is
aiolimiter's.

How pacing works
    Every granted request is logged with its time, its one request and its
    reserved tokens (prompt + max_tokens, or the server's learned charge). A
    request may go when there is room in both:

    * the minute window: at most ``rpm`` requests and ``tpm`` tokens in any 60 s;
    * the burst buckets, one for requests (``floor(rpm/60 * burst_seconds)``, at
      least 1) and one for tokens (``tpm/60 * burst_seconds``), each refilled
      continuously at the limit's rate — the way providers enforce per-minute
      limits, so a client that follows them is never refused. A request waits
      until the bucket holds what it needs; one bigger than the token bucket waits
      until it is full and leaves it in debt.

    Pacing is scheduled against absolute times: a bucket's level is computed from
    the clock, so a timer that fires late (a busy event loop, at 500 requests/s a
    timer is due every 2 ms) loses nothing — the refill it slept through is spent
    at once by the requests behind it. (The sliding burst window this replaced
    measured each slot from the previous *grant*, so every late wake-up pushed all
    later ones back and a few percent of the rate was lost at 50 requests/s.)
    The buckets start full, so the burst the server allows is used at the start
    and after idle, never more; windows start empty. Anyone can check the counts:
    no 60 s window holds more than the limit, and the grants fit the server's
    bucket.

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

What the server charges (``calibrate.ChargeModel``)
    Our reservation counts the response schema and adds ``max_tokens``; a server
    may count neither. The deficits its ``x-ratelimit-remaining-tokens`` reports
    are fitted to what we granted, and once the fit is sound the server's charge
    (plus 1 %) is what is reserved. Pass ``max_tokens`` to ``acquire`` so the two
    parts can be told apart. Dollars are not the limiter's: the ledger keeps the
    worst case.

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
    and a requests 429 makes request pacing smooth — bursts of a quarter of the
    server's (at least 2), still the full rate — so a pause is not followed by a
    burst refused again.

Cost
    ``acquire`` with room available creates no future and takes no lock; only
    waiters create futures. With no rpm/tpm it only counts in-flight requests.
    Measured (CPython 3.11, 2 cores): see bench/README.md ("limiter cost").
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final

from dynogen.errors import ConfigError, UserError
from dynogen.ratelimit.calibrate import START as CONC_START
from dynogen.ratelimit.calibrate import ChargeModel, Concurrency
from dynogen.ratelimit.clock import Clock, MonotonicClock
from dynogen.ratelimit.headers import RateLimitHeaders, parse_rate_limit_headers

__all__ = ["AUTO_MAX_SENDERS", "KINDS", "WINDOW", "Limiter", "Permit", "RequestTooLarge",
           "auto_max_senders"]

WINDOW: Final = 60.0  # seconds: the "per minute" of rpm and tpm
KINDS: Final = ("requests", "tokens", "unknown")
DEADBAND: Final = 0.01  # header corrections below this fraction of the limit are noise
_MIN_SLEEP: Final = 1e-6  # never arm a timer shorter than this (float rounding at wake-up)
_INF: Final = math.inf
SMOOTH: Final = 0.25  # after a requests 429, bursts are this share of the server's
_TINY: Final = 1e-7  # added to a bucket's wait so float rounding never wakes us just short
_REQUESTED: Final = re.compile(rb"Requested (\d+)")
AUTO_MAX_SENDERS: Final = 4096  # hard cap on requests in flight when the user sets none
_FD_RESERVE: Final = 256  # open files kept for everything but sockets (journals, cache...)


def auto_max_senders() -> int:
    """The hard in-flight cap without ``--max-in-flight``: what the open-files limit allows.

    Each request in flight holds a socket. Enough for 30,000 RPM at several
    seconds an answer; the rate limits, not this cap, decide how many are used.
    A soft open-files limit below what we could use is raised towards the hard
    one (many systems default to a soft 1,024).
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = AUTO_MAX_SENDERS + _FD_RESERVE
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            if new > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return AUTO_MAX_SENDERS
    return max(16, min(AUTO_MAX_SENDERS, soft - _FD_RESERVE))


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
                 "_charged_r", "_charged_t", "_released", "_seq", "_p", "_m", "_psum", "_msum")

    def __init__(self, tokens: int, asked: int = 0, max_tokens: int = 0) -> None:
        self.tokens = tokens  # reserved at acquire
        self._seq = 0  # grant order (logged permits), and our parts of what was asked
        self._p = asked - max_tokens
        self._m = max_tokens
        self._psum = 0.0  # running sums of those parts over every grant, just after it
        self._msum = 0.0
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
        "_clock", "_burst_seconds", "_user_cap", "_target", "_conc", "_in_flight",
        "_unlogged_r", "_unlogged_t",
        "_user_rpm", "_user_tpm", "_server_rpm", "_server_tpm", "_rpm", "_tpm", "_limited",
        "_cap_r", "_cap_t", "_long_r", "_rb_level", "_rb_time", "_rate", "_mean_tok",
        "_charge", "_grants", "_psum", "_msum", "_slot_waits",
        "_log", "_seen", "_h_long", "_req60", "_tok60",
        "_corrections", "_charged_r", "_charged_t", "_held",
        "_waiters", "_paused_until", "_pauses", "_paused_seconds",
        "_n_corrections", "_corrected_r", "_corrected_t", "_invalid_headers", "_last_headers",
        "_floor", "_tb_level", "_tb_time", "_smooth_r",
    )

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 max_in_flight: int | None = None, *, burst_seconds: float = 1.0,
                 clock: Clock | None = None) -> None:
        if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
            raise ConfigError(f"burst_seconds must be a positive number (got {burst_seconds})")
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
        self._server_rpm: float | None = None
        self._server_tpm: float | None = None
        self._rpm: float | None = None
        self._tpm: float | None = None
        self._limited = False
        self._cap_r = _INF  # burst capacity (requests): a bucket refilled at rpm/60 per second
        self._rb_level = 0.0
        self._rb_time = -_INF
        self._cap_t = _INF  # burst capacity (tokens): a bucket refilled at tpm/60 per second
        self._long_r = _INF  # minute capacity in requests (at least one)
        self._log: list[Permit] = []
        self._floor = -_INF  # grants before this no longer count in the minute window
        self._smooth_r = False  # after a requests 429: one request per 60/rpm seconds
        self._tb_level = 0.0  # token burst: a bucket refilled at tpm/60 per second
        self._tb_time = -_INF
        self._seen = -_INF  # clock time the window heads and sums are current for
        self._h_long = 0  # first log entry still in the minute window
        self._req60 = 0
        self._tok60 = 0
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
        if (permit is not None and permit.at is not None and info.limit_tokens is not None
                and info.remaining_tokens is not None):
            # What the server took for it, as of just after admitting it (ChargeModel).
            self._charge.observe(permit._seq, permit.at,
                                 info.limit_tokens - info.remaining_tokens, permit._psum,
                                 permit._msum, info.limit_tokens / WINDOW, permit._p, permit._m)
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

    def observe_refusal(self, permit: Permit, body: bytes) -> None:
        """A 429's body: OpenAI's says what this request is charged (``Requested N``)."""
        m = _REQUESTED.search(body)
        if m is not None and b"tokens per min" in body:
            self._charge.observe_exact(float(m.group(1)), permit._p, permit._m)

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
            "rpm_source": _source(self._user_rpm, self._server_rpm),
            "tpm_source": _source(self._user_tpm, self._server_tpm),
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
        return wait if wait == 0.0 else max(wait, _MIN_SLEEP)

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

    async def _wait(self, tokens: int, asked: int, max_tokens: int) -> Permit:
        loop = asyncio.get_running_loop()
        w = _Waiter(tokens)
        self._waiters.append(w)
        try:
            while True:
                w.fut = loop.create_future()
                if self._waiters[0] is w:
                    if self._charge.ready:
                        # The charge as known now: a request queued before the server's
                        # charge was learned must not go on reserving the old count.
                        w.tokens = self._charge.charge(asked, max_tokens)
                        if self._tpm is not None and w.tokens > self._tpm:
                            w.tokens = math.floor(self._tpm)  # goes alone, a full bucket
                    now = self._clock.now()
                    delay = self._wait_time(now, w.tokens)
                    if delay == 0.0:
                        self._waiters.popleft()
                        w.disarm()
                        permit = self._grant(now, w.tokens, asked, max_tokens)
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
        fixes = self._corrections
        while fixes and fixes[0].until <= now:
            c = fixes.pop(0)
            self._req60 -= c.req
            self._tok60 -= c.tok
        if i > 4096 and i * 2 > n:
            del log[:i]
            self._h_long = 0

    def _adjust(self, p: Permit, dr: int, dt: int) -> None:
        """Change what a logged request holds, in the minute window (if it still counts
        there) and in the burst buckets.

        Membership is judged at the time the heads were last moved to, which is
        exactly "at or after the head"; no need to read the clock.
        """
        now = self._seen
        at: float = p.at  # type: ignore[assignment]
        if at + WINDOW > now and at >= self._floor:
            self._req60 += dr
            self._tok60 += dt
        if dr and self._rpm is not None:
            self._rb_level = min(self._cap_r, self._rb_refill(now) - dr)
        if dt and self._tpm is not None:
            self._tb_level = min(self._cap_t, self._tb_refill(now) - dt)
        p._req += dr
        p._tok += dt

    def _rb_refill(self, now: float) -> float:
        """The request bucket's level at ``now`` (refilled since it was last read)."""
        rpm = self._rpm
        if rpm is None:
            return _INF
        last = self._rb_time
        if now > last:
            if last == -_INF:
                level = self._cap_r  # starts full: the server's burst from the first second
            else:
                level = self._rb_level + (now - last) * rpm / WINDOW
                if level > self._cap_r:
                    level = self._cap_r
            self._rb_level = level
            self._rb_time = now
        return self._rb_level

    def _tb_refill(self, now: float) -> float:
        """The token bucket's level at ``now`` (refilled since it was last read)."""
        tpm = self._tpm
        if tpm is None:
            return _INF
        last = self._tb_time
        if now > last:
            if last == -_INF:
                level = self._cap_t  # starts full: full speed from the first second
            else:
                level = self._tb_level + (now - last) * tpm / WINDOW
                if level > self._cap_t:
                    level = self._cap_t
            self._tb_level = level
            self._tb_time = now
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

    def _rebuild(self, now: float) -> None:
        """Recount the minute window from the log; fit the buckets to their new sizes."""
        log = self._log
        self._seen = now
        floor = bisect.bisect_left([p.at for p in log], self._floor)  # type: ignore[type-var]
        head = bisect.bisect_right([p.at + WINDOW for p in log], now)  # type: ignore[operator]
        self._h_long = max(head, floor)
        fixes = [c for c in self._corrections if c.until > now]
        self._corrections = fixes
        self._req60 = sum(p._req for p in _tail(log, self._h_long)) + sum(c.req for c in fixes)
        self._tok60 = sum(p._tok for p in _tail(log, self._h_long)) + sum(c.tok for c in fixes)
        # New limits, new buckets: never fuller than they now hold, and a debt run up
        # under the old limit is not carried over whole (the minute window still
        # counts those requests and tokens).
        if self._rpm is not None and self._rb_time != -_INF:
            self._rb_level = max(-self._cap_r, min(self._rb_level, self._cap_r))
        if self._tpm is not None and self._tb_time != -_INF:
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
