"""Rate limiting for dynogen: pace requests at the API's limits, never past them.

``Limiter`` (requests/minute, tokens/minute, in-flight cap, 429 pauses, server
headers; ``limiter``'s docstring maps its parts: ``pacing``, ``following``,
``waiters``, ``permit``, ``senders``), ``backoff`` (pure retry delays),
``headers`` (pure header parsing) and ``clock`` (the one place time is read;
``FakeClock`` for tests).
"""

from dynogen.ratelimit.backoff import RetryPolicy, retry_delay
from dynogen.ratelimit.clock import Clock, FakeClock, MonotonicClock
from dynogen.ratelimit.headers import (
    RateLimitHeaders,
    parse_duration,
    parse_rate_limit_headers,
    rate_limit_kind,
    retry_after_seconds,
)
from dynogen.ratelimit.limiter import Limiter, Permit, RequestTooLarge

__all__ = [
    "Clock",
    "FakeClock",
    "Limiter",
    "MonotonicClock",
    "Permit",
    "RateLimitHeaders",
    "RequestTooLarge",
    "RetryPolicy",
    "parse_duration",
    "parse_rate_limit_headers",
    "rate_limit_kind",
    "retry_after_seconds",
    "retry_delay",
]
