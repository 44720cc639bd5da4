"""What a server accepts, learnt from its refusals rather than guessed from a model name.

OpenAI-compatible servers differ in small ways: some refuse ``json_schema``
response formats, reasoning models refuse ``max_tokens`` (they want
``max_completion_tokens``) and any ``temperature`` but the default, and some
refuse parameters they do not know (``prompt_cache_key``, sent with the shared
prompt layout). Sniffing
model names goes stale; instead a run starts with the most useful request and,
when a 400 names the parameter it refuses, ``adapt`` returns the one change
that answers it. The engine then re-sends, and every later request uses the
adapted dialect. Pure: message in, dialect out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dynogen.prompts.schema import next_format

__all__ = ["Dialect", "adapt"]


@dataclass(frozen=True, slots=True)
class Dialect:
    format: str = "json_schema"
    token_param: str = "max_tokens"
    temperature: bool = True
    # ``prompt_cache_key`` (sent only by the shared prompt layout; see ``layout``)
    cache_key: bool = True

    def describe(self) -> str:
        temp = "sent" if self.temperature else "default"
        key = "" if self.cache_key else ", no prompt_cache_key"
        return f"format={self.format}, {self.token_param}, temperature={temp}{key}"


def adapt(dialect: Dialect, message: str) -> Dialect | None:
    """The dialect that avoids what a 400's ``message`` refused, or ``None`` if none does."""
    m = message.lower()
    if "prompt_cache_key" in m and dialect.cache_key:
        return dataclasses.replace(dialect, cache_key=False)
    if ("max_tokens" in m and "max_completion_tokens" in m
            and dialect.token_param == "max_tokens"):
        return dataclasses.replace(dialect, token_param="max_completion_tokens")
    if "temperature" in m and dialect.temperature and any(
            w in m for w in ("unsupported", "not support", "only the default", "does not support")):
        return dataclasses.replace(dialect, temperature=False)
    if "response_format" in m or "json_schema" in m or "schema" in m:
        nxt = next_format(dialect.format)
        if nxt is not None:
            return dataclasses.replace(dialect, format=nxt)
    return None
