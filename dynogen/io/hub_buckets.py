"""The Hub's rate-limit buckets: one ``Limiter`` each, fed by the Hub's own headers.

The Hugging Face Hub counts requests in buckets over fixed 5-minute windows
(https://huggingface.co/docs/hub/rate-limits): ``api`` (the Hub API, ``/api/...``),
``resolvers`` (every URL with ``/resolve/``: files, Parquet conversions included)
and ``pages`` (web pages; dynogen reads none). The dataset viewer
(datasets-server) is another service with limits of its own; its calls form the
``viewer`` bucket. An answer may say where its bucket stands::

    RateLimit: "api";r=489;t=189                         489 left, window ends in 189 s
    RateLimit-Policy: "fixed window";"api";q=500;w=300   500 per 300 s

``HubBuckets`` keeps one ``Limiter`` per bucket, each at the user's ``--hub-rpm``
and ``--hub-concurrency``, and learns from those headers:

* the policy's quota, as ``q * 60 / w`` requests a minute when that is lower
  (the limiter's window is a minute; ``q/5`` in every minute never passes ``q``
  in any 5 minutes), so calls are spread over the window, not burst at its start;
* the remaining count as a budget: calls granted after an answer said ``r`` are
  counted against ``r`` less the calls then in flight (the server may not have
  counted them yet); at zero the bucket waits for the window's end. Another
  process on the same token or address is seen this way too;
* a 429 (``pause``) holds the bucket back for the server's ``Retry-After``.

Until a bucket's first answer it sends one call at a time, so nothing goes out
faster than the limits before the server has named them. Calls of every bucket
together stay under ``concurrency`` in flight. Time comes from one ``Clock``:
tests drive a ``FakeClock``.

>>> buckets = HubBuckets(rpm=300, concurrency=8, viewer_url="https://datasets-server.huggingface.co")
>>> buckets.bucket_for("https://huggingface.co/datasets/a/b/resolve/main/README.md")
'resolvers'
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynogen.ratelimit import Clock, Limiter, MonotonicClock, Permit

__all__ = ["BUCKETS", "HubBuckets", "HubRateLimit", "parse_hub_rate_limit"]

BUCKETS = ("api", "resolvers", "viewer")
SAME_WINDOW = 2.0  # seconds: two answers whose windows end this close describe one window

_RATELIMIT = re.compile(r'"(?P<bucket>[^"]+)"\s*;\s*r\s*=\s*(?P<r>\d+)\s*;\s*t\s*=\s*(?P<t>\d+)')
_POLICY_Q = re.compile(r"(?:^|;)\s*q\s*=\s*(?P<q>\d+)")
_POLICY_W = re.compile(r"(?:^|;)\s*w\s*=\s*(?P<w>\d+)")


@dataclass(frozen=True, slots=True)
class HubRateLimit:
    """What one answer's ``RateLimit``/``RateLimit-Policy`` headers said (``None``: not said)."""

    bucket: str | None
    remaining: int | None
    reset: float | None
    quota: int | None
    window: float | None


def parse_hub_rate_limit(headers: Mapping[str, str]) -> HubRateLimit | None:
    """The Hub's IETF-draft rate-limit headers, or ``None`` when an answer has neither.

    >>> parse_hub_rate_limit({"RateLimit": '"api";r=0;t=55',
    ...                       "RateLimit-Policy": '"fixed window";"api";q=500;w=300'})
    HubRateLimit(bucket='api', remaining=0, reset=55.0, quota=500, window=300.0)
    """
    limit = policy = None
    for k, v in headers.items():
        low = k.lower()
        if low == "ratelimit":
            limit = v
        elif low == "ratelimit-policy":
            policy = v
    if limit is None and policy is None:
        return None
    bucket = remaining = reset = quota = window = None
    m = _RATELIMIT.search(limit or "")
    if m is not None:
        bucket, remaining, reset = m.group("bucket"), int(m.group("r")), float(m.group("t"))
    if policy:
        q, w = _POLICY_Q.search(policy), _POLICY_W.search(policy)
        if q is not None and w is not None and int(q.group("q")) > 0 and int(w.group("w")) > 0:
            quota, window = int(q.group("q")), float(w.group("w"))
        names = re.findall(r'"([^"]+)"', policy)
        if bucket is None and names:
            bucket = names[-1]
    return HubRateLimit(bucket, remaining, reset, quota, window)


class _Bucket:
    __slots__ = ("name", "limiter", "concurrency", "user_rpm", "server_rpm", "left", "reset_at",
                 "probing", "in_flight", "calls", "refused", "quota", "window")

    def __init__(self, name: str, limiter: Limiter, concurrency: int, user_rpm: float | None,
                 probing: bool) -> None:
        self.name = name
        self.limiter = limiter
        self.concurrency = concurrency
        self.user_rpm = user_rpm
        self.server_rpm: float | None = None
        self.left: int | None = None  # calls the server's window still allows us; None: unknown
        self.reset_at = 0.0
        self.probing = probing
        self.in_flight = 0
        self.calls = 0
        self.refused = 0  # 429s
        self.quota: int | None = None
        self.window: float | None = None


class HubBuckets:
    """One limiter per Hub rate-limit bucket, steered by the ``RateLimit`` headers.

    >>> buckets = HubBuckets(rpm=None, concurrency=8)
    >>> async def call() -> None:
    ...     permit = await buckets.acquire("resolvers")
    ...     buckets.observe("resolvers", {"RateLimit": '"resolvers";r=2999;t=300'})
    ...     buckets.release("resolvers", permit)
    """

    def __init__(self, rpm: float | None = None, concurrency: int = 8, *,
                 clock: Clock | None = None, viewer_url: str | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.concurrency = concurrency
        self.viewer_url = viewer_url.rstrip("/") if viewer_url else None
        self._buckets = {
            name: _Bucket(name, Limiter(rpm=rpm, max_in_flight=1, clock=self.clock), concurrency,
                          rpm, probing=True)
            for name in BUCKETS}
        self._slots: asyncio.Semaphore | None = None

    @classmethod
    def shared(cls, limiter: Limiter) -> HubBuckets:
        """Every call under one ``limiter`` (no buckets told apart, nothing learnt)."""
        self = cls(concurrency=max(1, limiter.max_in_flight), clock=limiter.clock)
        one = _Bucket("all", limiter, limiter.max_in_flight, limiter.rpm, probing=False)
        self._buckets = dict.fromkeys(BUCKETS, one)
        return self

    # ------------------------------------------------------------------ which bucket
    def bucket_for(self, url: str) -> str:
        """``viewer`` for the viewer's URLs, ``resolvers`` for ``/resolve/``, else ``api``."""
        if self.viewer_url and url.startswith(self.viewer_url):
            return "viewer"
        if "/resolve/" in url:
            return "resolvers"
        return "api"

    @property
    def max_in_flight(self) -> int:
        return self.concurrency

    # ----------------------------------------------------------------- acquire/release
    async def acquire(self, name: str) -> Permit:
        """Wait for room in bucket ``name`` (its window, its pace, the shared in-flight cap)."""
        b = self._buckets[name]
        clock = self.clock
        while True:
            now = clock.now()
            if b.left is not None and b.left <= 0:
                if now < b.reset_at:
                    await clock.sleep(b.reset_at - now)
                    continue
                b.left = None  # a new window: the next answer says how much of it is left
            permit = await b.limiter.acquire(0)
            if b.left is not None and b.left <= 0 and clock.now() < b.reset_at:
                b.limiter.release(permit, used_tokens=0)  # another caller took the last one
                continue
            break
        if b.left is not None:
            b.left -= 1
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        try:
            await self._slots.acquire()
        except BaseException:
            b.limiter.release(permit, used_tokens=0)
            raise
        b.in_flight += 1
        b.calls += 1
        return permit

    def release(self, name: str, permit: Permit) -> None:
        b = self._buckets[name]
        b.in_flight -= 1
        b.limiter.release(permit)
        if self._slots is not None:
            self._slots.release()

    # ------------------------------------------------------------------- learning
    def observe(self, name: str, headers: Mapping[str, str]) -> None:
        """Learn from one answer of bucket ``name`` (call it before ``release``)."""
        b = self._buckets[name]
        if b.probing:
            b.probing = False
            b.limiter.max_in_flight = b.concurrency
        info = parse_hub_rate_limit(headers)
        if info is None:
            return
        if info.bucket in self._buckets and self._buckets[info.bucket] is not b \
                and info.bucket != "pages":
            b = self._buckets[info.bucket]  # the server names the bucket it counted
        if info.quota is not None and info.window is not None:
            b.quota, b.window = info.quota, info.window
            rpm = info.quota * 60.0 / info.window
            if rpm != b.server_rpm:
                b.server_rpm = rpm
                in_force = rpm if b.user_rpm is None else min(rpm, b.user_rpm)
                b.limiter.set_limits(rpm=in_force)
        if info.remaining is not None and info.reset is not None:
            now = self.clock.now()
            reset_at = now + info.reset
            left = info.remaining - max(0, b.in_flight - 1)  # this answer's call is counted
            if b.left is not None and abs(reset_at - b.reset_at) <= SAME_WINDOW:
                left = min(left, b.left)  # an answer from earlier in the window says more left
            b.left, b.reset_at = left, reset_at

    def pause(self, name: str, seconds: float) -> None:
        """A 429 for bucket ``name``: nothing more of it for ``seconds``."""
        b = self._buckets[name]
        b.refused += 1
        b.limiter.pause(seconds)
        until = self.clock.now() + seconds
        b.reset_at = max(b.reset_at, until) if b.left == 0 else until
        b.left = 0

    def snapshot(self) -> dict[str, Any]:
        """Per bucket: calls, 429s, the rate in force and the server's quota if it named one."""
        out: dict[str, Any] = {}
        for name, b in self._buckets.items():
            out[name] = {"calls": b.calls, "refused_429": b.refused, "rpm": b.limiter.rpm,
                         "quota": b.quota, "window_seconds": b.window}
        return out
