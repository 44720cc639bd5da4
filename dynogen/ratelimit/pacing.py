"""The limiter's arithmetic on grants: the minute window and the burst buckets.

``Pacing`` holds the state that says whether a request may go — the log of
grants, the minute-window sums, the server's corrections and the two burst
buckets — and the arithmetic that keeps it current. It reads no clock and
wakes no one: ``Limiter`` passes ``now`` in, decides, and queues; it sets the
limits in force with ``configure`` and changes the state only through the
methods here (``grant``, ``adjust``, ``correct``, ``drain_*``, ``forget_before``).

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

Refunds
    ``release(permit, used_tokens)`` replaces the reservation by what was used,
    in every window the request still counts in. ``used_tokens=0`` means the
    request never counted against the server (not sent, refused): the request
    and all its tokens come back. ``None`` keeps the whole reservation (we do
    not know what was used, e.g. after a timeout).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterator
from typing import Final

from dynogen.ratelimit.permit import Permit

__all__ = ["SMOOTH", "WINDOW", "Correction", "Pacing"]

WINDOW: Final = 60.0  # seconds: the "per minute" of rpm and tpm
SMOOTH: Final = 0.25  # after a requests 429, bursts are this share of the server's
_INF: Final = math.inf
_TINY: Final = 1e-7  # added to a bucket's wait so float rounding never wakes us just short


class Correction:
    """Usage the server reported beyond ours: counts in the minute window until ``until``."""

    __slots__ = ("until", "req", "tok")

    def __init__(self, until: float, req: int, tok: int) -> None:
        self.until = until
        self.req = req
        self.tok = tok

    def __lt__(self, other: Correction) -> bool:
        return self.until < other.until


class Pacing:
    """The minute window and burst buckets of the limits in force.

    >>> pacing = Pacing()
    >>> pacing.configure(0.0, rpm=60, tpm=None, burst_seconds=1.0)
    >>> pacing.wait(0.0, 100)                 # the bucket starts full: go now
    0.0
    >>> pacing.grant(0.0, Permit(100, at=0.0, counted_tokens=100))
    >>> round(pacing.wait(0.0, 100), 3)       # then one request a second
    1.0
    """

    __slots__ = (
        "rpm", "tpm", "burst_requests", "burst_tokens", "minute_requests",
        "requests_in_window", "tokens_in_window",
        "_rb_level", "_rb_time", "_tb_level", "_tb_time", "_log", "_floor", "_seen", "_h_long",
        "_corrections",
    )

    def __init__(self) -> None:
        self.rpm: float | None = None  # the limits in force (None: no limit)
        self.tpm: float | None = None
        self.burst_requests = _INF  # a bucket refilled at rpm/60 per second (whole requests)
        self.burst_tokens = _INF  # a bucket refilled at tpm/60 per second
        self.minute_requests = _INF  # minute capacity in requests (at least one)
        self.requests_in_window = 0  # the minute window's sums: our grants and corrections
        self.tokens_in_window = 0
        self._rb_level = 0.0
        self._rb_time = -_INF
        self._tb_level = 0.0
        self._tb_time = -_INF
        self._log: list[Permit] = []
        self._floor = -_INF  # grants before this no longer count in the minute window
        self._seen = -_INF  # clock time the window heads and sums are current for
        self._h_long = 0  # first log entry still in the minute window
        self._corrections: list[Correction] = []  # sorted by expiry

    # ------------------------------------------------------------ the limits
    def configure(self, now: float, rpm: float | None, tpm: float | None,
                  burst_seconds: float, smooth: bool = False) -> None:
        """New limits in force: new bucket sizes, the minute window recounted.

        ``smooth`` (after a requests 429): request bursts of a quarter of the
        server's, but at least 2, so a late timer is still made up by the next
        request (a bucket of 1 cannot).
        """
        self.rpm, self.tpm = rpm, tpm
        if rpm is not None:
            burst = rpm / WINDOW * burst_seconds
            self.burst_requests = (max(2, math.floor(burst * SMOOTH)) if smooth
                                   else max(1, math.floor(burst)))
            self.minute_requests = max(1.0, rpm)
        else:
            self.burst_requests, self.minute_requests = _INF, _INF
        self.burst_tokens = tpm / WINDOW * burst_seconds if tpm is not None else _INF
        self._rebuild(now)

    def forget_before(self, when: float) -> None:
        """Grants before ``when`` no longer count in the minute window (from the next
        ``configure``): the server lowered its limit and does not hold history against us."""
        self._floor = when

    # ------------------------------------------------------ per request
    def wait(self, now: float, tokens: int) -> float:
        """0.0 if a request of ``tokens`` fits the windows now, else seconds until it might."""
        # expire(now), called only when something leaves the window (saves a call a request).
        log, head = self._log, self._h_long
        if self._corrections or (head < len(log)
                                 and log[head].at + WINDOW <= now):  # type: ignore[operator]
            self.expire(now)
        else:
            self._seen = now
        wait = 0.0
        rpm = self.rpm
        if rpm is not None:
            over = self.requests_in_window + 1 - self.minute_requests
            if over > 0:
                wait = self._minute_wait(now, over, requests=True)
            # Request burst: a bucket, as providers enforce it. Its level is computed
            # from absolute times, so a timer that fires late loses nothing: the
            # refill it slept through is there for the next requests.
            level = self._rb_refill(now)
            if level < 1.0:
                wait = max(wait, (1.0 - level) * WINDOW / rpm + _TINY)
        tpm = self.tpm
        if tpm is not None:
            over = self.tokens_in_window + tokens - tpm
            if over > 0:
                wait = max(wait, self._minute_wait(now, over, requests=False))
            # Token burst: a bucket too. A request waits until the bucket holds its
            # tokens (one bigger than the bucket waits until it is full and goes
            # alone), so the burst is never overdrawn.
            level = self._tb_refill(now)
            need = min(float(tokens), self.burst_tokens)
            if level < need:
                wait = max(wait, (need - level) * WINDOW / tpm + _TINY)
        return wait

    def grant(self, now: float, p: Permit) -> None:
        """Log the grant ``p`` (made at ``now``, just after ``wait(now, ...)`` said 0.0)
        and stamp it with the minute window's usage just after it."""
        tokens = p.counted_tokens
        self._log.append(p)
        self.requests_in_window += 1
        self.tokens_in_window += tokens
        # wait(now) just refilled both buckets to ``now``: take from them directly.
        if self.rpm is not None:
            self._rb_level -= 1.0
        if self.tpm is not None:
            self._tb_level -= tokens
        p.window_requests = self.requests_in_window
        p.window_tokens = self.tokens_in_window

    def adjust(self, p: Permit, dr: int, dt: int) -> None:
        """Change what a logged request holds, in the minute window (if it still counts
        there) and in the burst buckets.

        Membership is judged at the time the heads were last moved to, which is
        exactly "at or after the head"; no need to read the clock.
        """
        now = self._seen
        at: float = p.at  # type: ignore[assignment]
        if at + WINDOW > now and at >= self._floor:
            self.requests_in_window += dr
            self.tokens_in_window += dt
        if dr and self.rpm is not None:
            self._rb_level = min(self.burst_requests, self._rb_refill(now) - dr)
        if dt and self.tpm is not None:
            self._tb_level = min(self.burst_tokens, self._tb_refill(now) - dt)
        p.counted_requests += dr
        p.counted_tokens += dt

    def correct(self, until: float, req: int, tok: int) -> None:
        """Charge usage beyond our grants (the server's count, or grants made before
        any limit was known) to the minute window until ``until``."""
        bisect.insort(self._corrections, Correction(until, req, tok))
        self.requests_in_window += req
        self.tokens_in_window += tok

    def drain_requests(self, now: float) -> None:
        """After a requests 429: the server's request bucket is empty, ours cannot be fuller."""
        self._rb_level = min(self._rb_refill(now), 0.0)

    def drain_tokens(self, now: float) -> None:
        """After a tokens 429: the server's token bucket is empty, ours cannot be fuller.

        Without this, tokens refunded before we learnt the server does not refund
        would stay in our bucket for good (it never fills up under load to shed them).
        """
        self._tb_level = min(self._tb_refill(now), 0.0)

    # ---------------------------------------------------------- arithmetic
    def expire(self, now: float) -> None:
        """Move the minute window to ``now``: grants and corrections older leave its sums."""
        self._seen = now
        log = self._log
        n = len(log)
        i = start = self._h_long
        while i < n and log[i].at + WINDOW <= now:  # type: ignore[operator]
            p = log[i]
            self.requests_in_window -= p.counted_requests
            self.tokens_in_window -= p.counted_tokens
            i += 1
        if i != start:
            self._h_long = i
        fixes = self._corrections
        while fixes and fixes[0].until <= now:
            c = fixes.pop(0)
            self.requests_in_window -= c.req
            self.tokens_in_window -= c.tok
        if i > 4096 and i * 2 > n:
            del log[:i]
            self._h_long = 0

    def _minute_wait(self, now: float, over: float, *, requests: bool) -> float:
        """Seconds until ``over`` units have left the minute window (log and corrections)."""
        log = self._log
        entries = ((p.at + WINDOW,  # type: ignore[operator]
                    p.counted_requests if requests else p.counted_tokens)
                   for p in (log[i] for i in range(self._h_long, len(log))))
        fixes = ((c.until, c.req if requests else c.tok) for c in self._corrections)
        freed = 0
        for when, amount in heapq.merge(entries, fixes):
            freed += amount
            if freed >= over:
                return when - now
        return _INF

    def _rb_refill(self, now: float) -> float:
        """The request bucket's level at ``now`` (refilled since it was last read)."""
        rpm = self.rpm
        if rpm is None:
            return _INF
        last = self._rb_time
        if now > last:
            if last == -_INF:
                level = self.burst_requests  # starts full: the server's burst from the first second
            else:
                level = self._rb_level + (now - last) * rpm / WINDOW
                if level > self.burst_requests:
                    level = self.burst_requests
            self._rb_level = level
            self._rb_time = now
        return self._rb_level

    def _tb_refill(self, now: float) -> float:
        """The token bucket's level at ``now`` (refilled since it was last read)."""
        tpm = self.tpm
        if tpm is None:
            return _INF
        last = self._tb_time
        if now > last:
            if last == -_INF:
                level = self.burst_tokens  # starts full: full speed from the first second
            else:
                level = self._tb_level + (now - last) * tpm / WINDOW
                if level > self.burst_tokens:
                    level = self.burst_tokens
            self._tb_level = level
            self._tb_time = now
        return self._tb_level

    def _rebuild(self, now: float) -> None:
        """Recount the minute window from the log; fit the buckets to their new sizes."""
        log = self._log
        self._seen = now
        floor = bisect.bisect_left([p.at for p in log], self._floor)  # type: ignore[type-var]
        head = bisect.bisect_right([p.at + WINDOW for p in log], now)  # type: ignore[operator]
        self._h_long = max(head, floor)
        fixes = [c for c in self._corrections if c.until > now]
        self._corrections = fixes
        self.requests_in_window = (sum(p.counted_requests for p in _tail(log, self._h_long))
                                   + sum(c.req for c in fixes))
        self.tokens_in_window = (sum(p.counted_tokens for p in _tail(log, self._h_long))
                                 + sum(c.tok for c in fixes))
        # New limits, new buckets: never fuller than they now hold, and a debt run up
        # under the old limit is not carried over whole (the minute window still
        # counts those requests and tokens).
        if self.rpm is not None and self._rb_time != -_INF:
            self._rb_level = max(-self.burst_requests, min(self._rb_level, self.burst_requests))
        if self.tpm is not None and self._tb_time != -_INF:
            self._tb_level = max(-self.burst_tokens, min(self._tb_level, self.burst_tokens))


def _tail(log: list[Permit], start: int) -> Iterator[Permit]:
    return (log[i] for i in range(start, len(log)))
