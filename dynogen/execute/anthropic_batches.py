"""Anthropic's Message Batches behind the batch executor, through the ``anthropic`` SDK.

``BatchExecutor`` writes, journals, reserves, polls and follows up input files
the same way for both providers; this remote is what differs from OpenAI's
(``batch_remote``), with the same calls:

- no upload (``uploads = False``): ``create`` reads the local input file (OpenAI
  batch lines, the exact bodies an online run sends), translates each body
  (``anthropic_wire.to_messages``) and sends them in one request body of up to
  100,000 requests and 256 MB, each under its line's ``custom_id``;
- ``retrieve`` and ``cancel`` answer in the executor's vocabulary (``BatchView``:
  ``in_progress``, ``cancelling``, then ``completed``, ``expired`` or
  ``cancelled``), and ``lines`` streams the results file as OpenAI output lines
  (``anthropic_wire.result_line``), each at most ``max_line`` bytes, never whole;
- recovery without metadata (``intents = True``): Message Batches carry no
  metadata naming the run, so the executor journals an ``intent`` (the time)
  before each create, and ``find_batches`` adopts, for a file whose batch id a
  kill or a failed create left unknown, the batch of this account created since
  its intent with the same number of requests and no journaled owner. One that
  has ended, or several such, are told apart by their results' ``custom_id``s
  (the requests' cache keys); while that cannot be done yet the file is
  unresolved (``None``) and the executor submits nothing for it. None at all:
  the create never reached Anthropic, and the file may be submitted again.

The SDK is an optional dependency (``pip install 'dynogen[anthropic]'``): it is
imported when this remote is made, with one line naming the extra if it is
missing. Its transient-fault retries are kept for reads; a create is sent once
(``max_retries=0``): a create that timed out may still have made a batch, and
the intent lookup, not a blind retry, decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dynogen.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InsufficientQuotaError,
    ServerError,
)
from dynogen.execute.anthropic_wire import PrefixMarks, prefix_digest, result_line, to_messages
from dynogen.execute.batch_files import (
    MAX_RESULT_LINE,
    custom_id_of,
    iter_input_lines,
    key_hash,
    split_lines,
)
from dynogen.execute.batch_state import BatchJournal, FileState

__all__ = ["FILE_BYTES_CAP", "MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "AnthropicBatches",
           "BatchView", "Counts", "import_sdk", "view"]

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
# Input files are cut at this many bytes of OpenAI lines: the translated request body
# (a few hundred bytes a request more, at most) stays under MAX_BATCH_BYTES.
FILE_BYTES_CAP = 200 * 1024 * 1024
SKEW = 60.0  # seconds a batch's created_at may precede our intent (clocks disagree)
_RESUME = "nothing was marked done; fix this and run the same command again to resume"


def import_sdk() -> Any:
    """The ``anthropic`` SDK, or one line saying how to install it."""
    try:
        import anthropic
    except ImportError:
        raise ConfigError("--provider anthropic with --mode batch needs the anthropic SDK: "
                          "pip install 'dynogen[anthropic]'") from None
    return anthropic


@dataclass(frozen=True, slots=True)
class Counts:
    completed: int
    failed: int
    total: int


@dataclass(frozen=True, slots=True)
class BatchView:
    """A Message Batch in the words the executor and ``batch status`` read (OpenAI's)."""

    id: str
    status: str
    request_counts: Counts
    created_at: float
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: Any = None
    usage: Any = None


def view(b: Any) -> BatchView:
    c = b.request_counts
    total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
    if b.processing_status == "ended":
        status = ("cancelled" if b.cancel_initiated_at is not None
                  else "expired" if c.expired else "completed")
    elif b.processing_status == "canceling":
        status = "cancelling"
    else:
        status = "in_progress"
    return BatchView(b.id, status, Counts(c.succeeded, c.errored + c.canceled + c.expired, total),
                     b.created_at.timestamp(),
                     output_file_id=b.id if b.processing_status == "ended" else None)


class AnthropicBatches:
    """One run's view of its Message Batches (see the module docstring).

    >>> remote = AnthropicBatches("https://api.anthropic.com", key, run_id=rid, journal=journal)
    >>> batch_id = await remote.create(None, "input-000001.jsonl", "/chat/completions", 0)
    >>> (await remote.retrieve(batch_id)).status                # "in_progress", ...
    """

    uploads = False
    intents = True
    provider = "anthropic"
    file_bytes = FILE_BYTES_CAP

    def __init__(self, base_url: str, api_key: str | None, *, run_id: str,
                 journal: BatchJournal | None = None, client: Any = None, max_retries: int = 3,
                 timeout: float = 600.0, key_env: str = "ANTHROPIC_API_KEY") -> None:
        self.host = base_url.split("//", 1)[-1].split("/", 1)[0]
        self.run_id = run_id
        self.journal = journal
        self.key_env = key_env
        self.sdk = import_sdk()
        self.client = client or self.sdk.AsyncAnthropic(
            base_url=base_url.rstrip("/").removesuffix("/v1"), api_key=api_key or "no-key",
            max_retries=max_retries, timeout=timeout)
        self._own = client is None
        self._marks = PrefixMarks()

    # ---- errors -------------------------------------------------------------------------------

    def _map(self, e: Exception, what: str) -> APIError:
        sdk = self.sdk
        if isinstance(e, sdk.APIStatusError):
            status = e.status_code
            body = e.body if isinstance(e.body, dict) else {}
            err = body.get("error") if isinstance(body.get("error"), dict) else body
            message = str(err.get("message") if isinstance(err, dict) else e.message)[:300]
            rid = getattr(e, "request_id", None)
            if status in (401, 403):
                return AuthenticationError(
                    f"Anthropic refused the API key on {what} (HTTP {status}): check "
                    f"{self.key_env} (or the variable --api-key-env names); {_RESUME}",
                    status=status, request_id=rid, body=message)
            if status == 400 and "credit balance" in message.lower():
                return InsufficientQuotaError(
                    f"the Anthropic account's credit balance is too low (on {what}): add "
                    f"credit; {_RESUME}", status=status, request_id=rid, body=message)
            if 400 <= status < 500 and status not in (408, 409, 429):
                return BadRequestError(f"the Message Batches API refused {what} (HTTP {status}: "
                                       f"{message}); {_RESUME}", status=status, request_id=rid,
                                       body=message)
            return ServerError(f"the Message Batches API failed on {what} (HTTP {status}: "
                               f"{message})", status=status, request_id=rid, body=message)
        return APIConnectionError(f"cannot reach Anthropic at {self.host} on {what} "
                                  f"({type(e).__name__}): check --base-url and the network")

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except (self.sdk.APIStatusError, self.sdk.APIConnectionError) as e:
            raise self._map(e, what) from None

    # ---- the remote's calls -------------------------------------------------------------------

    async def upload(self, path: Path, name: str) -> str:
        raise AssertionError("Message Batches take their requests inline: nothing to upload")

    def request_body(self, path: Path) -> bytes:
        """The create call's body for a local input file: every line's translated body."""
        parts = []
        for key, line, _, _ in iter_input_lines(path):
            openai = orjson.loads(line)["body"]
            cache = self._marks.mark(prefix_digest(openai), key_hash(key))
            parts.append(b'{"custom_id":"' + custom_id_of(key).encode() + b'","params":'
                         + orjson.dumps(to_messages(openai, cache=cache)) + b"}")
        body = b'{"requests":[' + b",".join(parts) + b"]}"
        if len(body) > MAX_BATCH_BYTES:
            raise BadRequestError(f"{path.name} makes a Message Batch of {len(body):,} bytes, "
                                  f"over Anthropic's {MAX_BATCH_BYTES:,}: lower "
                                  "--batch-max-requests and run again", status=413)
        return body

    async def create(self, file_id: str | None, name: str, endpoint: str, round_: int) -> str:
        assert self.journal is not None, "a remote that creates batches needs the run's journal"
        body = self.request_body(self.journal.local(name))
        batch = await self._call(f"the batch for {name}", self.client.with_options(
            max_retries=0).post("/v1/messages/batches", content=body,
                                cast_to=self.sdk.types.messages.MessageBatch,
                                options={"headers": {"content-type": "application/json"}}))
        return str(batch.id)

    async def retrieve(self, batch_id: str) -> BatchView:
        return view(await self._call(f"polling {batch_id}",
                                     self.client.messages.batches.retrieve(batch_id)))

    async def cancel(self, batch_id: str) -> BatchView:
        return view(await self._call(f"cancelling {batch_id}",
                                     self.client.messages.batches.cancel(batch_id)))

    async def find_files(self, names: Any) -> dict[str, str]:
        return {}

    async def lines(self, batch_id: str,
                    max_line: int = MAX_RESULT_LINE) -> AsyncIterator[bytes | None]:
        """The results of an ended batch as OpenAI output lines, as they download."""
        try:
            async with self.client.messages.batches.with_streaming_response.results(
                    batch_id) as resp:
                async for line in split_lines(resp.iter_bytes(1 << 16), max_line):
                    yield None if line is None else result_line(line)
        except (self.sdk.APIStatusError, self.sdk.APIConnectionError) as e:
            raise self._map(e, f"downloading the results of {batch_id}") from None

    # ---- recovery -----------------------------------------------------------------------------

    async def find_batches(self, lost: Mapping[str, FileState]) -> dict[str, str | None]:
        """Batches of files with an intent but no journaled id: name → batch id, or ``None``
        while it cannot be told which one it is (see the module docstring)."""
        wanted = {n: st for n, st in lost.items() if st.intent_at is not None}
        if not wanted:
            return {}
        known = {f.batch_id for f in self.journal.load().values()} if self.journal else set()
        oldest = min(st.intent_at or 0.0 for st in wanted.values()) - SKEW
        candidates: list[BatchView] = []
        try:
            async for b in self.client.messages.batches.list(limit=100):
                v = view(b)
                if v.created_at < oldest:
                    break  # newest first: the rest are older still
                if v.id not in known:
                    candidates.append(v)
        except (self.sdk.APIStatusError, self.sdk.APIConnectionError) as e:
            raise self._map(e, "listing batches to find lost ones") from None
        found: dict[str, str | None] = {}
        taken: set[str] = set()
        for name, st in sorted(wanted.items(), key=lambda kv: kv[1].intent_at or 0.0):
            since = (st.intent_at or 0.0) - SKEW
            fits = [v for v in candidates if v.id not in taken and v.created_at >= since
                    and v.request_counts.total == st.requests]
            running = [v for v in fits if v.output_file_id is None]
            if len(fits) == 1 and running:
                found[name] = fits[0].id  # the one batch it can be; its results will tell
                taken.add(fits[0].id)
                continue
            if not fits:
                continue  # never created: the file may be submitted
            ended = [v for v in fits if v.output_file_id is not None]
            match = None
            for v in ended:
                if await self._holds(v.id, name):
                    match = v.id
                    break
            if match is not None:
                found[name] = match
                taken.add(match)
            elif running:
                found[name] = None  # some still running: wait for their results
        return found

    async def _holds(self, batch_id: str, name: str) -> bool:
        """Whether an ended batch's results are exactly the requests of input file ``name``."""
        assert self.journal is not None
        mine = {custom_id_of(key) for key, *_ in iter_input_lines(self.journal.local(name))}
        theirs: set[str] = set()
        async for line in self.lines(batch_id):
            if line is None:
                return False
            cid = orjson.loads(line).get("custom_id")
            if cid not in mine:
                return False
            theirs.add(cid)
        return theirs == mine

    async def aclose(self) -> None:
        if self._own:
            await self.client.close()
