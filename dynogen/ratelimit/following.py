"""Following the server: its rate-limit headers and its 429 bodies steer the limiter.

``Following`` is the part of ``Limiter`` that learns from answers: the
server's limits, usage the server counts beyond ours (charged to ``Pacing``'s
minute window as corrections), and what the server charges a request (fed to
``calibrate.ChargeModel``). The limiter owns the user's limits, the requests in
flight and the running totals of what it charged; its ``observe_headers`` hands
this part an answer's headers in two steps (``note``, then ``learn_usage``) and
applies what they return: new server limits, a correction to charge.

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
from typing import Any, Final

from dynogen.ratelimit.calibrate import ChargeModel
from dynogen.ratelimit.headers import RateLimitHeaders
from dynogen.ratelimit.pacing import WINDOW
from dynogen.ratelimit.permit import Permit

__all__ = ["DEADBAND", "Following", "limit_source", "lowered", "min_limit"]

DEADBAND: Final = 0.01  # header corrections below this fraction of the limit are noise
_REQUESTED: Final = re.compile(rb"Requested (\d+)")


def min_limit(a: float | None, b: float | None) -> float | None:
    """The limit in force from two (``None``: no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def lowered(old: float | None, new: float | None) -> bool:
    """A limit in force went down (not merely appeared or went away)."""
    return old is not None and new is not None and new < old


def limit_source(user: float | None, server: float | None) -> str | None:
    """Whose limit is in force: ``"user"`` (also on a tie), ``"server"``, or ``None``."""
    if user is None and server is None:
        return None
    if server is None or (user is not None and user <= server):
        return "user"
    return "server"


class Following:
    """Learns the server's limits, usage and charge from its answers (a part of ``Limiter``).

    It feeds ``charge`` (the limiter's, handed over at construction) and says
    what to charge the minute window; the limiter applies it.

    >>> following = Following(ChargeModel())
    >>> following.note(RateLimitHeaders(limit_requests=500.0)), following.server_rpm
    (True, 500.0)
    """

    __slots__ = ("server_rpm", "server_tpm", "last_headers", "invalid_headers", "corrections",
                 "corrected_requests", "corrected_tokens", "_charge")

    def __init__(self, charge: ChargeModel) -> None:
        self._charge = charge
        self.server_rpm: float | None = None
        self.server_tpm: float | None = None
        self.last_headers = RateLimitHeaders()
        self.invalid_headers = 0
        self.corrections = 0
        self.corrected_requests = 0
        self.corrected_tokens = 0

    def note(self, info: RateLimitHeaders) -> bool | None:
        """Read one answer's headers: count the unreadable ones, keep the answer as the
        last one, adopt the server's limits. ``None``: it said nothing; else whether
        the server's limits changed."""
        if info.invalid:
            self.invalid_headers += len(info.invalid)
        if info.empty:
            return None
        self.last_headers = info
        changed = False
        if info.limit_requests is not None and info.limit_requests != self.server_rpm:
            self.server_rpm = info.limit_requests
            changed = True
        if info.limit_tokens is not None and info.limit_tokens != self.server_tpm:
            self.server_tpm = info.limit_tokens
            changed = True
        return changed

    def learn_usage(self, info: RateLimitHeaders, permit: Permit | None, ref: Permit | None,
                    newly: bool, rpm: float | None, tpm: float | None, charged_r: int,
                    charged_t: int, unlogged_r: int, unlogged_t: int,
                    ) -> tuple[float, int, int] | None:
        """Learn the server's charge, and its usage beyond ours, from one answer.

        ``permit``: the answered request, if known; ``ref``: the request it is
        judged by (``permit`` if logged, else the oldest in flight); ``newly``:
        no limit was known before this answer; ``rpm``/``tpm``: the limits in
        force; ``charged_*``: our running totals of everything charged before
        this answer; ``unlogged_*``: in flight, granted while no limit was known.
        Returns usage beyond ours to charge the minute window with,
        ``(seconds, requests, tokens)``, or ``None``.
        """
        if (permit is not None and permit.at is not None and info.limit_tokens is not None
                and info.remaining_tokens is not None):
            # What the server took for it, as of just after admitting it (ChargeModel).
            self._charge.observe(permit.seq, permit.at,
                                 info.limit_tokens - info.remaining_tokens, permit.prompt_sum,
                                 permit.max_tokens_sum, info.limit_tokens / WINDOW,
                                 permit.prompt, permit.max_tokens)
        add_r = add_t = 0
        if rpm is not None and info.remaining_requests is not None:
            limit = info.limit_requests if info.limit_requests is not None else rpm
            add_r = _excess(limit - info.remaining_requests, ref, permit, newly, rpm,
                            charged_r, unlogged_r, requests=True)
        if tpm is not None and info.remaining_tokens is not None:
            limit = info.limit_tokens if info.limit_tokens is not None else tpm
            add_t = _excess(limit - info.remaining_tokens, ref, permit, newly, tpm,
                            charged_t, unlogged_t, requests=False)
        if not (add_r or add_t):
            return None
        resets = [r for r, a in ((info.reset_requests, add_r), (info.reset_tokens, add_t))
                  if a and r is not None]
        self.corrections += 1
        self.corrected_requests += add_r
        self.corrected_tokens += add_t
        return min(WINDOW, max(resets)) if resets else WINDOW, add_r, add_t

    def snapshot(self) -> dict[str, Any]:
        """The corrections made, headers refused, and the last answer's numbers."""
        last = self.last_headers
        return {
            "corrections": self.corrections,
            "corrected_requests": self.corrected_requests,
            "corrected_tokens": self.corrected_tokens,
            "invalid_headers": self.invalid_headers,
            "server": {
                "limit_requests": last.limit_requests,
                "limit_tokens": last.limit_tokens,
                "remaining_requests": last.remaining_requests,
                "remaining_tokens": last.remaining_tokens,
                "reset_requests": last.reset_requests,
                "reset_tokens": last.reset_tokens,
            },
        }

    def observe_refusal(self, permit: Permit, body: bytes) -> None:
        """A 429's body: OpenAI's says what this request is charged (``Requested N``)."""
        m = _REQUESTED.search(body)
        if m is not None and b"tokens per min" in body:
            self._charge.observe_exact(float(m.group(1)), permit.prompt, permit.max_tokens)


def _excess(server_used: float, ref: Permit | None, permit: Permit | None, newly: bool,
            limit: float, charged: int, unlogged: int, *, requests: bool) -> int:
    """Usage the server reports beyond anything we can account for (0 if none)."""
    if ref is not None:
        ours = ref.window_requests if requests else ref.window_tokens
        since = charged - (ref.charged_requests if requests else ref.charged_tokens)
        deficit = server_used - ours - since
        return math.ceil(deficit) if deficit > max(1.0, DEADBAND * limit) else 0
    if not newly:
        return 0
    # Limits just learned: nothing was logged. The server's count plus what
    # we granted after the answered request is our usage; the requests in
    # flight are already charged (see Limiter._apply_limits), so add only the rest.
    if permit is not None:
        since = charged - (permit.charged_requests if requests else permit.charged_tokens)
    else:
        since = unlogged
    return max(0, math.ceil(server_used + since - unlogged))
