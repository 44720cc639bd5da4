"""OpenAI-style rate limits for the fake server: token buckets, headers, 429 bodies, and
the stats that show throughput against those limits.

OpenAI documents limits per minute but enforces them over much shorter windows:
a fresh account at 500 RPM cannot send 500 requests in the first second. So a
bucket here refills continuously at ``limit / 60`` per second and holds only
``burst_seconds`` worth of that rate. A request is admitted when the bucket
holds what it needs, and its whole cost is then taken, even past zero: a
single request larger than the burst (a long prompt under a small TPM) is not
refused forever, it puts the bucket in debt that the refill pays back, so the
long-run rate stays exactly the limit.

Headers follow OpenAI's reading of the same state: ``remaining`` counts down
from the per-minute limit by the bucket's deficit (so one request at 500 RPM
leaves 499) and ``reset`` is the time the refill needs to pay the deficit
back, written like OpenAI writes durations (``120ms``, ``1s``, ``6m0s``).

Everything here is pure: the caller passes ``now`` in, so tests drive a fake
clock and never sleep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

__all__ = [
    "RateLimiter",
    "Refusal",
    "Stats",
    "TokenBucket",
    "format_duration",
    "insufficient_quota_body",
    "rate_limit_body",
]

_MORE = "Visit https://platform.openai.com/account/rate-limits to learn more."


def format_duration(seconds: float) -> str:
    """Write a wait the way OpenAI's headers and messages do: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{_trim(round(seconds, 3))}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{_trim(round(rest, 3))}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes}m{_trim(round(rest, 3))}s"


def _trim(x: float) -> str:
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return text or "0"


class TokenBucket:
    """A continuously refilling bucket of ``limit`` per minute with a short burst.

    >>> b = TokenBucket(600, burst_seconds=1.0, now=0.0)   # 10/s, holds 10
    >>> b.wait(1, now=0.0)
    0.0
    """

    __slots__ = ("limit", "rate", "capacity", "level", "updated")

    def __init__(self, limit: float, *, burst_seconds: float, now: float) -> None:
        if limit <= 0:
            raise ValueError(f"a rate limit must be positive, got {limit}")
        self.limit = limit
        self.rate = limit / 60.0
        # Below one unit a bucket could never admit anything (6 RPM with a 1 s burst).
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, cost: float, *, now: float) -> float:
        """Seconds until ``cost`` is admitted; 0.0 means now."""
        self.refill(now)
        need = min(cost, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost

    def deficit(self) -> float:
        return self.capacity - self.level

    def remaining(self) -> int:
        return int(min(self.limit, max(0.0, self.limit - self.deficit())))

    def reset_seconds(self) -> float:
        return max(0.0, self.deficit() / self.rate)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: ``kind`` is OpenAI's error type ("requests" or "tokens")."""

    kind: str
    wait: float
    body: bytes


def rate_limit_body(model: str, organization: str, kind: str, limit: float, used: float,
                    requested: float, wait: float) -> bytes:
    """OpenAI's 429 body for RPM (``kind="requests"``) or TPM (``kind="tokens"``)."""
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    message = (
        f"Rate limit reached for {model} in organization {organization} on {unit}: "
        f"Limit {int(limit)}, Used {int(used)}, Requested {int(requested)}. "
        f"Please try again in {format_duration(wait)}. {_MORE}"
    )
    return _error(message, kind, "rate_limit_exceeded")


def _too_large_body(model: str, organization: str, limit: float, requested: float) -> bytes:
    message = (
        f"Request too large for {model} in organization {organization} on tokens per min (TPM): "
        f"Limit {int(limit)}, Requested {int(requested)}. The input or output tokens must be "
        f"reduced in order to run successfully. {_MORE}"
    )
    return _error(message, "tokens", "rate_limit_exceeded")


def insufficient_quota_body() -> bytes:
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    return _error(message, "insufficient_quota", "insufficient_quota")


def _error(message: str, kind: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


class RateLimiter:
    """RPM and TPM buckets for one model; ``None`` for a limit means unlimited.

    >>> rl = RateLimiter(rpm=6000, tpm=None, now=0.0)
    >>> rl.admit(tokens=100, now=0.0) is None
    True
    """

    __slots__ = ("model", "organization", "burst_seconds", "requests", "tokens")

    def __init__(self, *, rpm: float | None, tpm: float | None, now: float,
                 burst_seconds: float = 1.0, model: str = "gpt-4o-mini",
                 organization: str = "org-fake") -> None:
        self.model = model
        self.organization = organization
        self.burst_seconds = burst_seconds
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.set_limits(rpm=rpm, tpm=tpm, now=now)

    def set_limits(self, *, rpm: float | None, tpm: float | None, now: float,
                   burst_seconds: float | None = None) -> None:
        """Change limits mid-run; a bucket keeps what it used, capped at its new capacity."""
        if burst_seconds is not None:
            if burst_seconds <= 0:
                raise ValueError(f"burst_seconds must be positive, got {burst_seconds}")
            self.burst_seconds = burst_seconds
        self.requests = self._rebuild(self.requests, rpm, now)
        self.tokens = self._rebuild(self.tokens, tpm, now)

    def refill_all(self, now: float) -> None:
        """Fill every bucket to capacity, as if the server had been idle for a while."""
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.level, bucket.updated = bucket.capacity, now

    def _rebuild(self, old: TokenBucket | None, limit: float | None,
                 now: float) -> TokenBucket | None:
        if limit is None:
            return None
        new = TokenBucket(limit, burst_seconds=self.burst_seconds, now=now)
        if old is not None:
            old.refill(now)
            new.level = min(new.capacity, new.capacity - old.deficit())
        return new

    def admit(self, *, tokens: int, now: float) -> Refusal | None:
        """Take one request and ``tokens`` from the buckets, or say why not (taking nothing)."""
        req, tok = self.requests, self.tokens
        if tok is not None and tokens > tok.limit:
            return Refusal("tokens", 0.0, _too_large_body(self.model, self.organization,
                                                           tok.limit, tokens))
        if req is not None:
            wait = req.wait(1, now=now)
            if wait > 0:
                used = min(req.limit, math.ceil(req.deficit()))
                return Refusal("requests", wait, rate_limit_body(
                    self.model, self.organization, "requests", req.limit, used, 1, wait))
        if tok is not None:
            wait = tok.wait(tokens, now=now)
            if wait > 0:
                used = min(tok.limit, math.ceil(tok.deficit()))
                return Refusal("tokens", wait, rate_limit_body(
                    self.model, self.organization, "tokens", tok.limit, used, tokens, wait))
        if req is not None:
            req.take(1)
        if tok is not None:
            tok.take(tokens)
        return None

    def headers(self, now: float) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers OpenAI sends with every answer."""
        out: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            bucket.refill(now)
            out[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
            out[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
            out[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset_seconds())
        return out

    def describe(self, now: float) -> dict[str, object]:
        """Limits and bucket levels for ``/stats``."""
        out: dict[str, object] = {"burst_seconds": self.burst_seconds}
        for name, bucket in (("rpm", self.requests), ("tpm", self.tokens)):
            if bucket is None:
                out[name] = None
                continue
            bucket.refill(now)
            out[name] = bucket.limit
            out[f"{name}_bucket"] = {"capacity": bucket.capacity, "level": round(bucket.level, 3)}
        return out


class Stats:
    """Totals and a per-second timeline of what the server sent, to plot against the limits.

    Second ``i`` of the timeline covers ``[started + i, started + i + 1)`` of the
    server's clock; ``tokens`` are prompt plus completion tokens of answered requests.
    Status 0 in ``by_status`` counts requests that got no answer (reset, timeout).
    """

    __slots__ = ("started", "requests", "by_status", "faults", "rate_limited", "prompt_tokens",
                 "completion_tokens", "completions", "tokens", "limited", "first_request",
                 "last_request", "last_answer")

    def __init__(self, started: float) -> None:
        self.started = started
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.completions: list[int] = []
        self.tokens: list[int] = []
        self.limited: list[int] = []
        # Seconds since start: the API span runs from the first request to the last
        # answer; from the last request to the last answer is the drain.
        self.first_request: float | None = None
        self.last_request: float | None = None
        self.last_answer: float | None = None

    def arrived(self, now: float) -> None:
        """A request came in (counted before it is judged)."""
        self.requests += 1
        if self.first_request is None:
            self.first_request = now - self.started
        self.last_request = now - self.started

    def record(self, now: float, status: int, tokens: tuple[int, int], fault: str | None,
               limited: str | None) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if fault is not None:
            self.faults[fault] = self.faults.get(fault, 0) + 1
        second = max(0, int(now - self.started))
        if second >= len(self.completions):
            grow = second + 1 - len(self.completions)
            for series in (self.completions, self.tokens, self.limited):
                series.extend([0] * grow)
        if limited is not None:
            self.rate_limited[limited] = self.rate_limited.get(limited, 0) + 1
            self.limited[second] += 1
        elif status == 200 and (tokens[0] or tokens[1]):
            self.last_answer = now - self.started
            self.prompt_tokens += tokens[0]
            self.completion_tokens += tokens[1]
            self.completions[second] += 1
            self.tokens[second] += tokens[0] + tokens[1]

    def to_dict(self, now: float) -> dict[str, object]:
        ok = sum(n for s, n in self.by_status.items() if 200 <= s < 300)
        return {
            "uptime": round(now - self.started, 3),
            "first_request": None if self.first_request is None else round(self.first_request, 4),
            "last_request": None if self.last_request is None else round(self.last_request, 4),
            "last_answer": None if self.last_answer is None else round(self.last_answer, 4),
            "totals": {
                "requests": self.requests,
                "2xx": ok,
                "429": self.by_status.get(429, 0),
                "by_status": {str(s): n for s, n in sorted(self.by_status.items())},
                "rate_limited": dict(self.rate_limited),
                "faults": dict(self.faults),
                "completions": sum(self.completions),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "tokens": self.prompt_tokens + self.completion_tokens,
            },
            "timeline": {"seconds": 1.0, "completions": self.completions,
                         "tokens": self.tokens, "rate_limited": self.limited},
        }
