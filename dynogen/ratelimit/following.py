"""Following the server: its rate-limit headers and its 429 bodies steer the limiter.

``ServerFollower`` is the part of ``Limiter`` that learns from answers: the
server's limits, usage the server counts beyond ours (charged to the minute
window as corrections), and what the server charges a request (fed to
``calibrate.ChargeModel``). It sits between ``Pacer``, whose window it
corrects, and ``Limiter``, which owns the user's limits and the in-flight
state it reads; it is a base class so ``observe_headers``, called once per
answer, stays one plain method call.

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

What the server charges (``calibrate.ChargeModel``)
    Our reservation counts the response schema and adds ``max_tokens``; a server
    may count neither. The deficits its ``x-ratelimit-remaining-tokens`` reports
    are fitted to what we granted, and once the fit is sound the server's charge
    (plus 1 %) is what is reserved. Pass ``max_tokens`` to ``acquire`` so the two
    parts can be told apart. Dollars are not the limiter's: the ledger keeps the
    worst case.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from dynogen.ratelimit.headers import RateLimitHeaders, parse_rate_limit_headers
from dynogen.ratelimit.pacing import WINDOW, Pacer
from dynogen.ratelimit.permit import Permit

if TYPE_CHECKING:
    from dynogen.ratelimit.calibrate import ChargeModel
    from dynogen.ratelimit.clock import Clock

__all__ = ["DEADBAND", "ServerFollower", "limit_source", "min_limit"]

DEADBAND: Final = 0.01  # header corrections below this fraction of the limit are noise
_REQUESTED: Final = re.compile(rb"Requested (\d+)")


def min_limit(a: float | None, b: float | None) -> float | None:
    """The limit in force from two (``None``: no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def limit_source(user: float | None, server: float | None) -> str | None:
    """Whose limit is in force: ``"user"`` (also on a tie), ``"server"``, or ``None``."""
    if user is None and server is None:
        return None
    if server is None or (user is not None and user <= server):
        return "user"
    return "server"


class ServerFollower(Pacer):
    """Learns the server's limits, usage and charge from its answers (``Limiter``'s base)."""

    __slots__ = ("_server_rpm", "_server_tpm", "_last_headers", "_invalid_headers",
                 "_n_corrections", "_corrected_r", "_corrected_t")

    if TYPE_CHECKING:
        # The limiter's, read here (``Limiter.__init__`` sets them).
        _clock: Clock
        _burst_seconds: float
        _limited: bool
        _user_rpm: float | None
        _user_tpm: float | None
        _charge: ChargeModel
        _held: dict[Permit, None]
        _unlogged_r: int
        _unlogged_t: int

        def _apply_limits(self, now: float) -> None: ...

    def __init__(self) -> None:
        super().__init__()
        self._server_rpm: float | None = None
        self._server_tpm: float | None = None
        self._n_corrections = 0
        self._corrected_r = 0
        self._corrected_t = 0
        self._invalid_headers = 0
        self._last_headers = RateLimitHeaders()

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
            new_rpm = min_limit(self._user_rpm, self._server_rpm)
            new_tpm = min_limit(self._user_tpm, self._server_tpm)
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
