"""What ``Limiter.acquire`` hands out, and what it refuses outright.

A ``Permit`` is the record of one grant: the limiter's pacing, refunds and
header corrections all read and update the numbers it carries, so it lives
apart from any one of them. ``RequestTooLarge`` is the one refusal that needs no
waiting to decide, and ``Reservation`` is ``limiter.reserve(n)``'s
``async with`` form of acquire + release.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from dynogen.errors import UserError

if TYPE_CHECKING:
    from dynogen.ratelimit.limiter import Limiter

__all__ = ["Permit", "RequestTooLarge", "Reservation"]


class RequestTooLarge(UserError, ValueError):
    """One request's worst case exceeds the token limit, so it could never be sent."""


class Permit:
    """A granted request: one in-flight slot, one request and ``tokens`` reserved tokens.

    Hand it back with ``Limiter.release(permit, used_tokens)``.
    """

    __slots__ = ("tokens", "at", "used_tokens", "_req", "_tok", "_used_r", "_used_t",
                 "_charged_r", "_charged_t", "_released", "_seq", "_p", "_m", "_psum", "_msum")

    def __init__(self, tokens: int, asked: int = 0, max_tokens: int = 0) -> None:
        self.tokens = tokens  # reserved at acquire
        self._seq = 0  # grant order (logged permits), and our parts of what was asked
        self._p = asked - max_tokens
        self._m = max_tokens
        self._psum = 0.0  # running sums of those parts over every grant, just after it
        self._msum = 0.0
        self.at: float | None = None  # when granted, if logged (some limit was set)
        self.used_tokens: int | None = None  # for ``async with limiter.reserve(...)``
        self._req = 1  # what the windows hold for it now
        self._tok = tokens
        self._used_r = 0  # our minute-window usage just after granting it
        self._used_t = 0
        self._charged_r = 0  # running totals of everything charged, just after it
        self._charged_t = 0
        self._released = False

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Permit tokens={self.tokens} at={self.at} {state}>"


class Reservation:
    __slots__ = ("_limiter", "_tokens", "_permit")

    def __init__(self, limiter: Limiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        self._permit = await self._limiter.acquire(self._tokens)
        return self._permit

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._permit is not None:
            self._limiter.release(self._permit, self._permit.used_tokens)
