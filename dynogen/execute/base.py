"""The execution seam: what every way of reaching the model promises its callers.

The engine, ``dynogen call``, the judge and the embedder build ``Request``s
and hand them to an ``Executor``; how the answer is obtained (sent at once
under the rate limits, found in the request cache, or collected from an
OpenAI Batch API job hours later) is the executor's business. Filtering,
dedup, journals and outputs therefore cannot differ by mode: they only ever
see a ``Completion``.

>>> async with open_executor(cfg, state_dir=run_dir, stage="tasks") as ex:
...     comp = await ex.complete(Request(body, prompt_tokens=812, max_tokens=640), Accounting())

An executor raises, besides returning a ``Completion``:

- ``RequestFailed``: given up on (retries or batch rounds exhausted); the
  caller records the reason and moves on;
- ``Stopped``: the run is stopping and the request was not sent;
- ``BudgetExceeded``: the request does not fit in what is left of the budget;
- ``FatalAPIError`` (``BadRequestError`` among them): retrying cannot help;
  a 400 is left to the caller, who may change the request's shape and retry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dynogen.execute.client import Completion

__all__ = ["CHAT", "EMBEDDINGS", "Accounting", "Executor", "Request", "usage_counts"]

CHAT = "/chat/completions"
EMBEDDINGS = "/embeddings"


@dataclass(frozen=True, slots=True)
class Request:
    """One request body, exactly as sent: its bytes are its cache key.

    ``prompt_tokens`` and ``max_tokens`` are the caller's counts, used for the
    worst case the limiter and the ledger reserve before anything is sent.
    """

    body: bytes
    prompt_tokens: int
    max_tokens: int
    endpoint: str = CHAT
    variant: str | None = None


@dataclass(slots=True)
class Accounting:
    """What one logical request (with its retries) cost; the caller sums these."""

    requests: int = 0
    responses: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    cost: float = 0.0


def usage_counts(usage: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) from an OpenAI usage object; ``None`` if unusable.

    Embedding answers carry no ``completion_tokens``: they count as 0.
    """
    if not isinstance(usage, dict):
        return None
    pin, pout = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(pin, int) or not isinstance(pout, int) or pin < 0 or pout < 0:
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return pin, pout, cached if isinstance(cached, int) and cached >= 0 else 0


class Executor(Protocol):
    """Sends requests within the limits and the budget; online and batch alike."""

    session: Counter[str]

    @property
    def concurrency(self) -> int:
        """How many requests a caller should keep waiting on at once."""
        ...

    def plan(self, requests: Iterable[Request]) -> None:
        """The first tries the caller will ask for, in order, so a batch executor can
        submit them ahead; an online executor ignores it. Consumed lazily."""
        ...

    async def complete(self, req: Request, acct: Accounting) -> Completion: ...

    def stop(self) -> None:
        """Stop sending: waiting and later ``complete`` calls raise ``Stopped``."""
        ...

    @property
    def stopping(self) -> bool: ...

    def in_flight(self) -> dict[str, int]:
        """What is out at the server now, for ``status.json`` (requests online; input
        files and batches in batch mode). Informational: never read by the pipeline."""
        ...

    async def aclose(self) -> None: ...
