"""Reading the rate-limit headers an OpenAI-compatible server sends (pure, no I/O).

Servers describe their limits with::

    x-ratelimit-limit-requests: 500          x-ratelimit-limit-tokens: 200000
    x-ratelimit-remaining-requests: 499      x-ratelimit-remaining-tokens: 199000
    x-ratelimit-reset-requests: 120ms        x-ratelimit-reset-tokens: 6m0s
    retry-after: 2    retry-after-ms: 1500   (on 429)

Resets are Go-style durations ("1s", "6m0s", "20ms", "1h2m3.5s") or plain
seconds. A header that is present but unreadable is named in
``RateLimitHeaders.invalid`` so the limiter can count it; it is never a crash.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "RateLimitHeaders",
    "parse_duration",
    "parse_rate_limit_headers",
    "rate_limit_kind",
    "retry_after_seconds",
]

_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|μs|ms|s|m|h))+")
_PLAIN = re.compile(rf"{_NUMBER}")

_NAMES = (
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    "retry-after", "retry-after-ms", "date",
)


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration or a plain number; ``None`` if it is neither.

    >>> [parse_duration(s) for s in ("1s", "6m0s", "20ms", "1h2m3.5s", "0.5", "soon")]
    [1.0, 360.0, 0.02, 3723.5, 0.5, None]
    """
    s = text.strip()
    if _PLAIN.fullmatch(s):
        return float(s)
    if not _GO_DURATION.fullmatch(s):
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(s))


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """What one answer said about limits; ``None`` where a header was absent or unreadable."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None
    invalid: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return all(
            v is None for v in (self.limit_requests, self.limit_tokens, self.remaining_requests,
                                self.remaining_tokens, self.reset_requests, self.reset_tokens,
                                self.retry_after)
        )


def _count(text: str) -> float | None:
    s = text.strip()
    if not _PLAIN.fullmatch(s):
        return None
    v = float(s)
    return v if math.isfinite(v) else None


def _relevant(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers we read, by lower-case name, whatever mapping type (or case) we were given."""
    out: dict[str, str] = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk in _NAMES and lk not in out:
            out[lk] = v
    return out


def _retry_after(h: dict[str, str], bad: list[str]) -> float | None:
    ms = h.get("retry-after-ms")
    if ms is not None:
        v = _count(ms)
        if v is not None:
            return v / 1000.0
        bad.append("retry-after-ms")
    ra = h.get("retry-after")
    if ra is None:
        return None
    v = _count(ra)
    if v is not None:
        return v
    # An HTTP date: measured against the answer's own Date header, so no local
    # wall clock is involved (clocks on two machines disagree; one answer does not).
    when = _http_date(ra)
    sent = _http_date(h.get("date", ""))
    if when is not None and sent is not None:
        return max(0.0, when - sent)
    bad.append("retry-after")
    return None


def _http_date(text: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Read every rate-limit header of one answer.

    >>> parse_rate_limit_headers({"X-RateLimit-Reset-Tokens": "6m0s"}).reset_tokens
    360.0
    """
    h = _relevant(headers)
    if not h:
        return RateLimitHeaders()
    bad: list[str] = []

    def count(name: str) -> float | None:
        raw = h.get(name)
        if raw is None:
            return None
        v = _count(raw)
        if v is None:
            bad.append(name)
        return v

    def duration(name: str) -> float | None:
        raw = h.get(name)
        if raw is None:
            return None
        v = parse_duration(raw)
        if v is None or not math.isfinite(v):
            bad.append(name)
            return None
        return v

    limit_r = count("x-ratelimit-limit-requests")
    limit_t = count("x-ratelimit-limit-tokens")
    # A limit of zero would stop the run for good; treat it as unreadable instead.
    if limit_r == 0:
        bad.append("x-ratelimit-limit-requests")
        limit_r = None
    if limit_t == 0:
        bad.append("x-ratelimit-limit-tokens")
        limit_t = None
    return RateLimitHeaders(
        limit_requests=limit_r,
        limit_tokens=limit_t,
        remaining_requests=count("x-ratelimit-remaining-requests"),
        remaining_tokens=count("x-ratelimit-remaining-tokens"),
        reset_requests=duration("x-ratelimit-reset-requests"),
        reset_tokens=duration("x-ratelimit-reset-tokens"),
        retry_after=_retry_after(h, bad),
        invalid=tuple(bad),
    )


def rate_limit_kind(info: RateLimitHeaders) -> str:
    """Which limit a 429 hit, judged from the headers: "requests", "tokens" or "unknown"."""
    if info.remaining_requests is not None and info.remaining_requests < 1:
        return "requests"
    if info.remaining_tokens is not None and info.remaining_tokens < 1:
        return "tokens"
    return "unknown"


def retry_after_seconds(headers: Mapping[str, str] | RateLimitHeaders,
                        kind: str = "unknown") -> float | None:
    """Seconds the server asks us to wait before sending again, or ``None`` if it did not say.

    ``retry-after-ms`` wins, then ``retry-after``, then the reset header of the
    limit that was hit. When the kind is unknown we ask the headers which
    remaining count is spent; if neither is, we take the shorter reset, since a
    reset says when a limit is *fully* refilled (tokens often say "6m0s"), and
    waiting that long for a limit that is not spent would idle the run.
    """
    info = headers if isinstance(headers, RateLimitHeaders) else parse_rate_limit_headers(headers)
    if info.retry_after is not None:
        return info.retry_after
    if kind not in ("requests", "tokens"):
        kind = rate_limit_kind(info)
    if kind == "requests":
        return info.reset_requests
    if kind == "tokens":
        return info.reset_tokens
    resets = [r for r in (info.reset_requests, info.reset_tokens) if r is not None]
    return min(resets) if resets else None
