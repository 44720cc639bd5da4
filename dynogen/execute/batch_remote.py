"""The Batch API through the ``openai`` SDK: upload, create, find, poll, download, cancel.

Off the hot path (a handful of calls per 50,000 requests), so the SDK's cost
does not matter here and its multipart upload and cursor pagination are worth
having. Its transient-fault retries (connection, 408/409/429/5xx) are kept;
what escapes them is mapped onto dynogen's error tree with a message that says
what to do: a 4xx on upload or create is final (``FatalAPIError``), the run
stops with one line, and nothing is marked done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import openai

from dynogen.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    InsufficientQuotaError,
    ServerError,
)
from dynogen.execute.batch_files import MAX_RESULT_LINE, batch_url, split_lines

__all__ = ["BatchRemote", "map_error"]

_RESUME = "nothing was marked done; fix this and run the same command again to resume"


def map_error(e: Exception, what: str, host: str) -> APIError:
    """``e`` (from the SDK) as one of dynogen's errors, naming ``what`` was refused."""
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        body = getattr(e, "body", None)
        code = body.get("code") if isinstance(body, dict) else None
        message = str(body.get("message") if isinstance(body, dict) else e.message)[:300]
        rid = e.request_id
        if status in (401, 403):
            return AuthenticationError(
                f"the Batch API at {host} refused the API key on {what} (HTTP {status}): check "
                f"OPENAI_API_KEY (or the variable --api-key-env names); {_RESUME}",
                status=status, request_id=rid, body=message)
        if status == 429 and (code == "insufficient_quota" or "quota" in message.lower()):
            return InsufficientQuotaError(
                f"the API account is out of quota (on {what}): add credit or raise the "
                f"spending limit; {_RESUME}", status=status, request_id=rid, body=message)
        if status == 404 and "batch" not in message.lower() and "file" not in message.lower():
            return BadRequestError(
                f"the server at {host} does not serve the Batch API (HTTP 404 on {what}): point "
                "--base-url at a server with /v1/files and /v1/batches, or use --mode online",
                status=status, request_id=rid, body=message)
        if 400 <= status < 500 and status not in (408, 409, 429):
            return BadRequestError(
                f"the Batch API refused {what} (HTTP {status}: {message}); {_RESUME}",
                status=status, request_id=rid, body=message)
        return ServerError(f"the Batch API failed on {what} (HTTP {status}: {message})",
                           status=status, request_id=rid, body=message)
    return APIConnectionError(f"cannot reach the Batch API at {host} on {what} "
                              f"({type(e).__name__}): check --base-url and the network; {_RESUME}")


class BatchRemote:
    """One run's view of the server's files and batches."""

    uploads = True    # requests go up as a file first
    intents = False   # batches carry metadata: no intent journal needed to find them
    provider = "openai"

    def __init__(self, base_url: str, api_key: str | None, *, run_id: str,
                 client: openai.AsyncOpenAI | None = None, max_retries: int = 3,
                 timeout: float = 600.0) -> None:
        self.host = base_url.split("//", 1)[-1].split("/", 1)[0]
        self.run_id = run_id
        self.client = client or openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "no-key", max_retries=max_retries,
            timeout=timeout)
        self._own = client is None

    def remote_name(self, name: str) -> str:
        """The uploaded file's name: the run id keeps two runs' files apart."""
        return f"dynogen-{self.run_id}-{name}"

    def metadata(self, name: str, round_: int) -> dict[str, str]:
        return {"dynogen_run": self.run_id, "dynogen_input": name, "dynogen_round": str(round_)}

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            raise map_error(e, what, self.host) from None

    async def upload(self, path: Path, name: str) -> str:
        with path.open("rb") as f:
            obj = await self._call(f"the upload of {name}", self.client.files.create(
                file=(self.remote_name(name), f), purpose="batch"))
        return str(obj.id)

    async def create(self, file_id: str, name: str, endpoint: str, round_: int) -> str:
        obj = await self._call(f"the batch for {name}", self.client.batches.create(
            input_file_id=file_id, endpoint=batch_url(endpoint),  # type: ignore[arg-type]
            completion_window="24h", metadata=self.metadata(name, round_)))
        return str(obj.id)

    async def retrieve(self, batch_id: str) -> Any:
        return await self._call(f"polling {batch_id}", self.client.batches.retrieve(batch_id))

    async def cancel(self, batch_id: str) -> Any:
        return await self._call(f"cancelling {batch_id}", self.client.batches.cancel(batch_id))

    async def find_files(self, names: Collection[str]) -> dict[str, str]:
        """Uploads of this run the journal lost (killed before recording): name → file id."""
        wanted = {self.remote_name(n): n for n in names}
        found: dict[str, str] = {}
        if not wanted:
            return found
        try:
            async for f in self.client.files.list(purpose="batch"):
                if f.filename in wanted and f.status != "error":
                    found.setdefault(wanted[f.filename], f.id)
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            raise map_error(e, "listing files to find lost uploads", self.host) from None
        return found

    async def find_batches(self, names: Collection[str]) -> dict[str, str]:
        """Batches of this run the journal lost: input name → batch id (newest wins)."""
        found: dict[str, str] = {}
        if not names:
            return found
        try:
            async for b in self.client.batches.list(limit=100):
                meta = b.metadata or {}
                name = meta.get("dynogen_input")
                if meta.get("dynogen_run") == self.run_id and isinstance(name, str) \
                        and name in names:
                    found.setdefault(name, b.id)
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            raise map_error(e, "listing batches to find lost ones", self.host) from None
        return found

    async def lines(self, file_id: str,
                    max_line: int = MAX_RESULT_LINE) -> AsyncIterator[bytes | None]:
        """The lines of a result file as they download (``None``: a line over ``max_line``)."""
        try:
            async with self.client.files.with_streaming_response.content(file_id) as resp:
                async for line in split_lines(resp.iter_bytes(1 << 16), max_line):
                    yield line
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            raise map_error(e, f"downloading {file_id}", self.host) from None

    async def aclose(self) -> None:
        if self._own:
            await self.client.close()
