"""What the server charges per request, and how many requests to keep in flight (pure).

Two estimates the limiter keeps, each from what it can observe without trusting
anyone's documentation:

``ChargeModel`` — tokens per request, as the server counts them.
    We reserve ``prompt + max_tokens`` where ``prompt`` is our count of the
    messages *and* a conservative count of the ``response_format`` schema.
    Servers differ: one counts the schema, another does not; one adds
    ``max_tokens``, another compares it. Reserving more than the server takes
    leaves TPM unused (a seventh of it on a structured workload), reserving
    less earns 429s. So we learn it from ``x-ratelimit-remaining-tokens``.

    Model: the server keeps a bucket refilled at ``limit/60`` per second (how
    OpenAI-style servers enforce per-minute limits) and takes ``a*p + b*m`` for
    a request whose prompt part we counted as ``p`` and whose ``max_tokens`` is
    ``m``. An answer's headers give the bucket's deficit ``D = limit -
    remaining`` just after its request was admitted. For two answered requests
    ``j`` then ``k`` (in the order we granted them)::

        D_k - D_j + rate * (t_k - t_j) = a * (P_k - P_j) + b * (M_k - M_j)

    where ``P``/``M`` are running sums of what we granted. The identity holds
    only while the bucket stayed in debt between the two (a full bucket stops
    refilling); ``D_j > rate * (t_k - t_j)`` guarantees that, so other pairs are
    skipped. Least squares over the pairs, pulled weakly towards ``a = b = 1``
    (so a workload whose prompts barely vary still gets a sane split), gives
    ``a`` and ``b``. The model is adopted only after ``MIN_PAIRS`` pairs, when
    its fitted charge of the mean request is plausible (between 30 % and 120 %
    of our conservative count) and the fit explains the data; then reservations
    are the fitted charge plus ``MARGIN``. Until then — and for dollars, always —
    the conservative count stands. A 429 body's ``Requested N`` (the charge of
    that very request) enters as an exact observation.

``Concurrency`` — the in-flight target from Little's law.
    Requests in flight = rate x time each one is held. The limiter knows the
    binding rate (RPM, or TPM / tokens per request); the hold time is measured
    the same way: over each ``PERIOD`` the time-average of requests in flight
    divided by the releases per second (``area / releases``). That ratio is the
    mean hold time whether or not the in-flight cap was binding, tail included,
    and while a run ramps up it over-estimates (many sent, few back), which is
    the safe side. Target = ``rate * W * HEADROOM + SLACK``, bounded by the hard
    cap. Before anything came back, the target doubles each time it is reached
    (the pacer, not the cap, decides how fast requests go out).

    One regime fools Little's law: a limit far above what the process can do
    (a fast local server, a huge account). Then the hold time is our own event
    loop's queue and grows with the requests in flight, so the target would run
    up to the hard cap for nothing. When the process used >= ``CPU_BUSY`` of a
    core over the period (``cpu``, real clocks only) the target may shrink but
    not grow: more requests in flight cannot make a saturated loop faster.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

__all__ = ["ChargeModel", "Concurrency"]

MIN_PAIRS: Final = 24  # pairs of answers before the charge model may be adopted
MARGIN: Final = 0.01  # added to a fitted charge: a little under-count costs 429s
_PRIOR: Final = 4.0  # weight (in units of a typical pair's x^2) pulling a, b towards 1


class ChargeModel:
    """Least-squares fit of the server's charge ``a*prompt + b*max_tokens`` (see module doc).

    >>> m = ChargeModel()
    >>> m.charge(1000, 200)                  # nothing learned: the conservative count
    1000
    """

    __slots__ = ("_sxx", "_sxy", "_syy", "_sx1y", "_sx2y", "_s11", "_s12", "_s22", "_n",
                 "_sum_p", "_sum_m", "_seen", "a", "b", "ready", "_last")

    def __init__(self) -> None:
        self._s11 = self._s12 = self._s22 = 0.0  # normal equations
        self._sx1y = self._sx2y = self._syy = 0.0
        self._sxx = self._sxy = 0.0  # for the fit's quality (explained share)
        self._n = 0
        self._sum_p = self._sum_m = 0.0  # of the requests seen, for the mean request
        self._seen = 0
        self.a = 1.0
        self.b = 1.0
        self.ready = False
        # The latest observation (by grant order): (seq, time, deficit, P sum, M sum).
        self._last: tuple[int, float, float, float, float] | None = None

    @property
    def pairs(self) -> int:
        return self._n

    def charge(self, tokens: int, max_tokens: int) -> int:
        """Tokens to reserve for a request we counted as ``tokens`` (``max_tokens`` of them)."""
        if not self.ready:
            return tokens
        p = tokens - max_tokens
        return max(1, math.ceil((self.a * p + self.b * max_tokens) * (1.0 + MARGIN)))

    def observe(self, seq: int, at: float, deficit: float, p_sum: float, m_sum: float,
                rate: float, p: int, m: int) -> None:
        """One answer: its grant ``seq`` and time, the server's deficit, our running sums.

        ``p``/``m`` are this request's own parts (for the mean request).
        """
        self._seen += 1
        self._sum_p += p
        self._sum_m += m
        last = self._last
        if last is not None and seq > last[0]:
            _, t0, d0, p0, m0 = last
            dt = at - t0
            if d0 > rate * dt and dt >= 0.0:
                self._add(p_sum - p0, m_sum - m0, deficit - d0 + rate * dt)
        if last is None or seq > last[0]:
            self._last = (seq, at, deficit, p_sum, m_sum)

    def observe_exact(self, charged: float, p: int, m: int) -> None:
        """A 429 body said this request is charged ``charged`` tokens."""
        self._add(float(p), float(m), charged)

    def _add(self, x1: float, x2: float, y: float) -> None:
        if x1 <= 0 and x2 <= 0:
            return
        self._s11 += x1 * x1
        self._s12 += x1 * x2
        self._s22 += x2 * x2
        self._sx1y += x1 * y
        self._sx2y += x2 * y
        self._syy += y * y
        self._n += 1
        if self._n >= MIN_PAIRS:
            self._fit()

    def _fit(self) -> None:
        n = self._n
        # A weak prior towards a = b = 1, scaled to the data so it is worth _PRIOR pairs.
        w = _PRIOR * (self._s11 + self._s22) / (2.0 * n)
        s11, s12, s22 = self._s11 + w, self._s12, self._s22 + w
        r1, r2 = self._sx1y + w, self._sx2y + w
        det = s11 * s22 - s12 * s12
        if det <= 0:
            return
        a = (r1 * s22 - r2 * s12) / det
        b = (s11 * r2 - s12 * r1) / det
        # Residual share: 1 - SSE/SST (through the origin), from the normal equations.
        sse = (self._syy - 2 * (a * self._sx1y + b * self._sx2y)
               + a * a * self._s11 + 2 * a * b * self._s12 + b * b * self._s22)
        explained = 1.0 - sse / self._syy if self._syy > 0 else 0.0
        mean_p = self._sum_p / max(self._seen, 1)
        mean_m = self._sum_m / max(self._seen, 1)
        conservative = mean_p + mean_m
        fitted = a * mean_p + b * mean_m
        plausible = (conservative > 0 and 0.3 <= fitted / conservative <= 1.2
                     and a >= -0.1 and b >= -0.1 and explained >= 0.8)
        if plausible:
            self.a, self.b, self.ready = max(0.0, a), max(0.0, b), True
        else:
            self.ready = False

    def snapshot(self) -> dict[str, float | int | bool]:
        return {"adopted": self.ready, "pairs": self._n, "prompt_factor": round(self.a, 4),
                "max_tokens_factor": round(self.b, 4)}


PERIOD: Final = 0.5  # seconds between re-estimates of the hold time
HEADROOM: Final = 2.0  # target = rate x hold time x this (+ SLACK): room for the tail
SLACK: Final = 8
MIN_DONE: Final = 4  # releases a period needs before it says anything
MAX_PERIOD: Final = 10.0  # ...and a period ends after this long whatever came back
START: Final = 64  # first target when a rate is known, before anything came back
ALPHA_UP: Final = 0.5  # the hold-time estimate follows rises fast...
ALPHA_DOWN: Final = 0.2  # ...and falls slowly
CPU_BUSY: Final = 0.85  # share of a core above which the process is its own bottleneck


class Concurrency:
    """In-flight target from Little's law on a moving estimate of hold time (module doc).

    >>> c = Concurrency(hard=4096)
    >>> c.target(rate=200.0)                  # nothing measured yet
    64
    """

    __slots__ = ("hard", "hold", "_area", "_last_t", "_period_start", "_done", "done_total",
                 "_started", "_cpu", "_cpu_start", "saturated")

    def __init__(self, hard: int, cpu: Callable[[], float] | None = None) -> None:
        self.hard = hard
        self._cpu = cpu  # process CPU seconds (time.process_time); None: not measured
        self._cpu_start = cpu() if cpu is not None else 0.0
        self.saturated = False  # the last period kept a core >= CPU_BUSY busy
        self.hold: float | None = None  # seconds a permit is held, smoothed
        self._area = 0.0  # integral of in-flight over the current period
        self._last_t = 0.0
        self._period_start = 0.0
        self._done = 0
        self.done_total = 0
        self._started = False

    def target(self, rate: float | None, current: int | None = None) -> int:
        """The in-flight target for ``rate`` requests/s (``None``: no rate known)."""
        if rate is None:
            return min(self.hard, START)
        if self.hold is None:
            return min(self.hard, max(START, current or 0))
        little = max(1, min(self.hard, math.ceil(rate * self.hold * HEADROOM) + SLACK))
        if self.saturated and current is not None:
            return min(little, max(current, START))
        return little

    def step(self, now: float, in_flight: int, released: bool) -> bool:
        """Account ``in_flight`` up to ``now`` (before a change); True when a period closed."""
        if not self._started:
            self._started = True
            self._last_t = self._period_start = now
        elif now > self._last_t:
            self._area += in_flight * (now - self._last_t)
            self._last_t = now
        if released:
            self._done += 1
            self.done_total += 1
        elapsed = now - self._period_start
        if elapsed < PERIOD or self._done < MIN_DONE:
            return False
        # A period must see a fair share of what is in flight come back (a quarter),
        # or a ramp-up (many sent, the few fast ones back) says "a minute each".
        if 4 * self._done < self._area / elapsed and elapsed < MAX_PERIOD:
            return False
        w = self._area / self._done
        if self.hold is None:
            self.hold = w
        else:
            alpha = ALPHA_UP if w > self.hold else ALPHA_DOWN
            self.hold += alpha * (w - self.hold)
        if self._cpu is not None:
            cpu = self._cpu()
            self.saturated = cpu - self._cpu_start >= CPU_BUSY * elapsed
            self._cpu_start = cpu
        self._area = 0.0
        self._done = 0
        self._period_start = now
        return True
