"""The limiter's arithmetic on grants: the minute window and the burst buckets.

``Pacer`` holds the state that says whether a request may go — the log of
grants, the minute-window sums, the server's corrections and the two burst
buckets — and the pure arithmetic that keeps it current. It reads no clock and
wakes no one: ``Limiter`` passes ``now`` in, decides, and queues. It is a base
class rather than an object the limiter holds so that ``acquire`` and
``release`` reach this state as plain attributes, without an extra lookup.

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

__all__ = ["WINDOW", "Correction", "Pacer"]

WINDOW: Final = 60.0  # seconds: the "per minute" of rpm and tpm
_INF: Final = math.inf


class Correction:
    """Usage the server reported beyond ours: counts in the minute window until ``until``."""

    __slots__ = ("until", "req", "tok")

    def __init__(self, until: float, req: int, tok: int) -> None:
        self.until = until
        self.req = req
        self.tok = tok

    def __lt__(self, other: Correction) -> bool:
        return self.until < other.until


class Pacer:
    """The minute window and burst buckets of the limits in force (``Limiter`` sets them)."""

    __slots__ = (
        "_rpm", "_tpm", "_cap_r", "_cap_t", "_long_r", "_rb_level", "_rb_time",
        "_tb_level", "_tb_time", "_log", "_floor", "_seen", "_h_long", "_req60", "_tok60",
        "_corrections", "_charged_r", "_charged_t",
    )

    def __init__(self) -> None:
        self._rpm: float | None = None  # the limits in force (None: no limit)
        self._tpm: float | None = None
        self._cap_r = _INF  # burst capacity (requests): a bucket refilled at rpm/60 per second
        self._rb_level = 0.0
        self._rb_time = -_INF
        self._cap_t = _INF  # burst capacity (tokens): a bucket refilled at tpm/60 per second
        self._long_r = _INF  # minute capacity in requests (at least one)
        self._log: list[Permit] = []
        self._floor = -_INF  # grants before this no longer count in the minute window
        self._tb_level = 0.0  # token burst: a bucket refilled at tpm/60 per second
        self._tb_time = -_INF
        self._seen = -_INF  # clock time the window heads and sums are current for
        self._h_long = 0  # first log entry still in the minute window
        self._req60 = 0
        self._tok60 = 0
        self._corrections: list[Correction] = []  # sorted by expiry
        self._charged_r = 0  # running totals: every grant and correction ever charged
        self._charged_t = 0

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
        bisect.insort(self._corrections, Correction(until, req, tok))
        self._req60 += req
        self._tok60 += tok
        self._charged_r += req
        self._charged_t += tok

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
