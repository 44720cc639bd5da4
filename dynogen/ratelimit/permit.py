"""What ``Limiter.acquire`` hands out, and what it refuses outright.

A ``Permit`` is the record of one grant: plain data that the limiter's parts
read and update through their own methods (pacing moves what the windows count
for it, following reads what was charged around it, the charge model reads its
parts), so it lives apart from all of them and imports none of them.
``RequestTooLarge`` is the one refusal that needs no waiting to decide, and
``Reservation`` is ``limiter.reserve(n)``'s ``async with`` form of acquire +
release (it names the limiter only by the two methods it calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from dynogen.errors import UserError

__all__ = ["Permit", "RequestTooLarge", "Reservation"]


class RequestTooLarge(UserError, ValueError):
    """One request's worst case exceeds the token limit, so it could never be sent."""


# eq=False: a permit is one grant, equal only to itself and hashed by identity (the
# limiter keeps the permits in flight as dict keys).
@dataclass(slots=True, eq=False, repr=False)
class Permit:
    """A granted request: one in-flight slot, one request and ``tokens`` reserved tokens.

    Hand it back with ``Limiter.release(permit, used_tokens)``. Besides ``tokens``
    and ``used_tokens`` the fields are the limiter's bookkeeping, public so that
    each of its parts reads them without reaching into another; the limiter
    fills them positionally (one call is the cheapest way to build one).

    >>> Permit(1200)
    <Permit tokens=1200 at=None held>
    """

    tokens: int  # reserved at acquire
    charged_requests: int = 0  # running totals of everything charged, just after it
    charged_tokens: int = 0
    at: float | None = None  # when granted, if logged (some limit was set)
    prompt: int = 0  # our count of what was asked, less ``max_tokens`` (the charge model's p)
    max_tokens: int = 0  # the request's ``max_tokens`` (the charge model's m)
    seq: int = 0  # grant order (logged permits)
    prompt_sum: float = 0.0  # running sums of ``prompt`` and ``max_tokens`` over every
    max_tokens_sum: float = 0.0  # grant, just after this one
    counted_requests: int = 1  # what the minute window and buckets hold for it now
    counted_tokens: int = 0
    window_requests: int = 0  # our minute-window usage just after granting it
    window_tokens: int = 0
    used_tokens: int | None = None  # for ``async with limiter.reserve(...)``
    released: bool = False

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Permit tokens={self.tokens} at={self.at} {state}>"


class _Grants(Protocol):
    async def acquire(self, tokens: int, max_tokens: int = 0) -> Permit: ...

    def release(self, permit: Permit, used_tokens: int | None = None) -> None: ...


class Reservation:
    """``limiter.reserve(n)``: acquire on entering the ``async with``, release on leaving."""

    __slots__ = ("_limiter", "_tokens", "_permit")

    def __init__(self, limiter: _Grants, tokens: int) -> None:
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
