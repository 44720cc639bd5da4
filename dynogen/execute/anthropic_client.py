"""A lean client for Anthropic's ``POST /v1/messages``, behind the online executor.

It takes the OpenAI-shaped body the executor sends and hands back an
OpenAI-shaped answer (``anthropic_wire``), so the executor's limiter, ledger,
request cache, retries and spend journal work unchanged. Like ``ChatClient``
it sends pre-serialised bytes over the pooled transport rather than through
the ``anthropic`` SDK: the SDK's models cost milliseconds of CPU a request,
which two cores shared by 50+ requests a second do not have (the SDK drives
Message Batches, off the hot path, in ``anthropic_batches``). It does not
retry; ``classify`` says what a refusal means.

It decides one thing of its own: whether a request marks its shared prefix for
Anthropic's prompt cache. A cache write costs 1.25x the input price and pays
off only if the prefix is read again, so a prefix is marked once a second
request (not a retry of the first) uses it (``PrefixMarks``): a shared system
prompt and few-shot turns are cached, a prefix made unique by a per-unit
schema is never written.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import xxhash

from dynogen.errors import APIError, BadRequestError
from dynogen.execute.anthropic_wire import (
    ANTHROPIC_VERSION,
    PrefixMarks,
    answer,
    classify,
    prefix_digest,
    to_messages,
)
from dynogen.execute.transport import AiohttpTransport, RawResponse, Transport

__all__ = ["AnthropicClient"]


class AnthropicClient:
    """Sends OpenAI-shaped bodies to Anthropic's Messages API; answers come back OpenAI-shaped.

    >>> client = AnthropicClient("https://api.anthropic.com", api_key="sk-ant-...")
    >>> raw = await client.send(orjson.dumps(openai_body))   # a chat.completion's bytes
    """

    def __init__(self, base_url: str, api_key: str | None, *, transport: Transport | None = None,
                 timeout: float = 120.0, key_env: str = "ANTHROPIC_API_KEY",
                 prompt_cache: bool = True) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.url = self.base_url + "/v1/messages"
        self.timeout = timeout
        self.transport: Transport = transport or AiohttpTransport()
        self.key_env = key_env
        self.prompt_cache = prompt_cache
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self._headers = headers
        self._marks = PrefixMarks()

    def translate(self, body: bytes) -> bytes:
        """The Messages API body for an OpenAI-shaped one (``cache_control`` as above)."""
        try:
            openai = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequestError("a request body is not JSON: nothing to translate for "
                                  "Anthropic", status=400) from None
        if not isinstance(openai, dict):
            raise BadRequestError("a request body is not a JSON object", status=400)
        cache = self.prompt_cache and self._marks.mark(prefix_digest(openai),
                                                        xxhash.xxh3_64_intdigest(body))
        return orjson.dumps(to_messages(openai, cache=cache))

    async def send(self, body: bytes, endpoint: str = "/chat/completions") -> RawResponse:
        """One round trip; a 2xx answer comes back as an OpenAI chat completion."""
        if endpoint != "/chat/completions":
            raise BadRequestError(f"Anthropic serves no {endpoint}: use an OpenAI-compatible "
                                  "server for embeddings (--embed-model with --base-url)",
                                  status=404)
        resp = await self.transport.post(self.url, self.translate(body), self._headers,
                                         self.timeout)
        return answer(resp) if 200 <= resp.status < 300 else resp

    def classify(self, resp: RawResponse) -> APIError:
        return classify(resp, self.key_env)

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def aclose(self) -> None:
        await self.transport.aclose()

    def __repr__(self) -> str:
        return f"AnthropicClient({self.url!r})"
