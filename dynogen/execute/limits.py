"""Per-minute limits on input and output tokens apart (Anthropic's), over two ``Limiter``s.

``Limiter`` paces requests and one kind of token. Anthropic counts three things
per minute: requests, input tokens (uncached ones, and cache writes; cache reads
are free for most models) and output tokens (``max_tokens`` held while a request
runs, then what it generated). ``SplitLimiter`` keeps requests and input tokens
on one limiter and output tokens on a second, and offers the online executor
the calls a ``Limiter`` does, so the executor sends through either:

- ``acquire(tokens, max_tokens)``: ``tokens - max_tokens`` input tokens on the
  first, ``max_tokens`` output tokens on the second (both, or neither);
- ``release(permit, 0 | None | n)``: not counted / keep everything, on both;
- ``answered(permit, prompt, cached, completion)``: input tokens used (reads
  excluded unless ``cache_reads_count``), output tokens generated;
- ``observe_headers``: Anthropic's headers, split by ``anthropic_headers.split``
  (a 429's without its permit: nothing was charged for it);
- ``pause(seconds, kind)``: ``output_tokens`` holds the second, anything else the
  first (every request passes both, so either holds every sender).

Only the public ``Limiter`` API is used; the limiter's internals are its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dynogen.ratelimit import Clock, Limiter, Permit

__all__ = ["SplitLimiter", "SplitPermit"]

HeaderSplit = Callable[[Mapping[str, str]], tuple[Mapping[str, str], Mapping[str, str]]]


class SplitPermit:
    """One request's permits: requests and input tokens, output tokens."""

    __slots__ = ("main", "out")

    def __init__(self, main: Permit, out: Permit) -> None:
        self.main = main
        self.out = out


class SplitLimiter:
    """Requests + input tokens on ``main``, output tokens on ``output``.

    >>> limits = SplitLimiter(Limiter(rpm=4000, tpm=2_000_000),
    ...                       Limiter(tpm=400_000), split=anthropic_headers.split)
    >>> permit = await limits.acquire(1_800 + 640, 640)
    >>> limits.answered(permit, prompt=1_800, cached=1_024, completion=150)
    """

    __slots__ = ("main", "output", "_split", "cache_reads_count")

    def __init__(self, main: Limiter, output: Limiter, *, split: HeaderSplit,
                 cache_reads_count: bool = False) -> None:
        self.main = main
        self.output = output
        self._split = split
        self.cache_reads_count = cache_reads_count

    @property
    def clock(self) -> Clock:
        return self.main.clock

    @property
    def max_senders(self) -> int:
        return self.main.max_senders

    async def acquire(self, tokens: int, max_tokens: int = 0) -> SplitPermit:
        out = await self.output.acquire(max_tokens, max_tokens)
        try:
            main = await self.main.acquire(max(0, tokens - max_tokens), 0)
        except BaseException:
            self.output.release(out, 0)
            raise
        return SplitPermit(main, out)

    def release(self, permit: SplitPermit, used_tokens: int | None = None) -> None:
        """``0``: the request never counted; otherwise what it used is unknown, keep it all."""
        keep = 0 if used_tokens == 0 else None
        self.main.release(permit.main, keep)
        self.output.release(permit.out, keep)

    def answered(self, permit: SplitPermit, prompt: int, cached: int, completion: int, *,
                 refund: bool = True) -> None:
        """An answer's usage: input tokens the server counted, output tokens generated."""
        if not refund:
            self.release(permit, None)
            return
        counted = prompt if self.cache_reads_count else max(0, prompt - cached)
        self.main.release(permit.main, counted)
        self.output.release(permit.out, completion)

    def observe_headers(self, headers: Mapping[str, str], permit: SplitPermit | None = None,
                        *, refused: bool = False) -> None:
        """An answer's headers. A refused request's (429) teach limits and usage but not
        what a request is charged: the server took nothing for it, and the limiter's
        charge fit would read its grant as a request charged nothing."""
        if refused:
            permit = None
        main, out = self._split(headers)
        if main:
            self.main.observe_headers(main, permit.main if permit is not None else None)
        if out:
            self.output.observe_headers(out, permit.out if permit is not None else None)

    def observe_refusal(self, permit: SplitPermit, body: bytes) -> None:
        """A 429 body: Anthropic's names no per-request charge; nothing to learn."""

    def pause(self, seconds: float, kind: str = "unknown") -> None:
        if kind == "output_tokens":
            self.output.pause(seconds, "tokens")
        elif kind == "input_tokens":
            self.main.pause(seconds, "tokens")
        else:
            self.main.pause(seconds, kind if kind in ("requests", "tokens") else "unknown")

    def snapshot(self) -> dict[str, Any]:
        snap = self.main.snapshot()
        snap["output_tokens"] = self.output.snapshot()
        return snap
