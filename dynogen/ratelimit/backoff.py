"""How long to wait before retrying a failed request (pure: no clock, no sleeping).

Exponential backoff with *full jitter* (a uniform draw in ``[0, min(cap,
base * 2**(attempt-1))]``): it spreads the retries of many concurrent workers
that failed together, where plain exponential backoff would send them back in
lockstep. A wait the server asked for (``retry-after``) is honoured as given,
up to ``MAX_RETRY_AFTER``. The random source is injected so tests are exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dynogen.errors import ConfigError

__all__ = [
    "BASE_DELAY",
    "MAX_DELAY",
    "MAX_RETRIES",
    "MAX_RETRY_AFTER",
    "RetryPolicy",
    "retry_delay",
]

# Every backoff constant lives here.
MAX_RETRIES = 6  # retries after the first try
BASE_DELAY = 0.5  # seconds: ceiling of the first retry's wait
MAX_DELAY = 30.0  # seconds: the ceiling never grows past this
MAX_RETRY_AFTER = 600.0  # seconds: a longer server-given wait is cut to this

Rng = Callable[[], float]


def retry_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
    max_retry_after: float = MAX_RETRY_AFTER,
    rng: Rng = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    >>> retry_delay(3, rng=lambda: 0.5)     # half of min(30, 0.5 * 2**2)
    1.0
    >>> retry_delay(3, retry_after=7.0)    # the server said when
    7.0
    """
    if attempt < 1:
        raise ValueError(f"retry attempts are counted from 1, got {attempt}")
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0.0:
        return min(retry_after, max_retry_after)
    # 2**attempt overflows float for huge attempts; the cap is reached long before.
    ceiling = cap if attempt > 64 else min(cap, base * 2.0 ** (attempt - 1))
    return rng() * ceiling


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with full-jitter exponential backoff.

    >>> policy = RetryPolicy(max_retries=3, base=1.0, cap=3.0)
    >>> list(policy.delays(rng=lambda: 1.0))
    [1.0, 2.0, 3.0]
    >>> policy.should_retry(4)
    False
    """

    max_retries: int = MAX_RETRIES
    base: float = BASE_DELAY
    cap: float = MAX_DELAY
    max_retry_after: float = MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries must be 0 or more (got {self.max_retries})")
        if not (self.base > 0 and math.isfinite(self.base)):
            raise ConfigError(f"the retry base delay must be positive seconds (got {self.base})")
        if not self.cap >= self.base:
            raise ConfigError(
                f"the retry delay cap ({self.cap} s) must be at least the base ({self.base} s)"
            )
        if not self.max_retry_after >= 0:
            raise ConfigError(f"max_retry_after must be 0 or more (got {self.max_retry_after})")

    def should_retry(self, attempt: int) -> bool:
        """Whether retry number ``attempt`` (counted from 1) is allowed."""
        return 1 <= attempt <= self.max_retries

    def delay(self, attempt: int, retry_after: float | None = None, *,
              rng: Rng = random.random) -> float:
        """Seconds to wait before retry number ``attempt``; see ``retry_delay``."""
        return retry_delay(attempt, retry_after, base=self.base, cap=self.cap,
                           max_retry_after=self.max_retry_after, rng=rng)

    def delays(self, *, rng: Rng = random.random) -> Iterator[float]:
        """The waits before each allowed retry, in order, when the server gives no retry-after."""
        for attempt in range(1, self.max_retries + 1):
            yield self.delay(attempt, rng=rng)
