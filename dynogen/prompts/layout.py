"""Which prompt layout a run sends: the per-unit schema, or one shared cacheable prefix.

``per_unit``: the response schema enumerates the unit's own field names
(``schema.response_format``), so a grammar-constrained server (llama.cpp,
OpenAI strict mode) cannot write a task on a field the dataset lacks; the
system prompt and two few-shot turns come after it. No two units share the
schema, so no prompt cache that hashes it first (OpenAI's) can reuse anything.

``shared``: one schema for every unit (field names are bounded free strings,
``schema.shared_response_format``), a longer system prompt that states the
task conventions, and more few-shot turns, together over 1,024 tokens: the
prefix OpenAI caches (its guide: "the structured output schema serves as a
prefix to the system message"; prefixes of 1,024+ tokens, in 128-token steps)
and bills at its cached price. Requests also carry a ``prompt_cache_key``
(``cache_key``), which OpenAI uses to route requests with the same prefix to the
same cache; a server that refuses the field gets requests without it
(``dialect.adapt``). Unknown field names are dropped by the task filter.

``auto`` (the default) is decided per run by ``choose_layout`` from facts the
run already has, never from a model's name: ``shared`` where the request goes
to OpenAI's own API (the base URL is OpenAI's default: the server whose cache
rule the layout is measured against), online (a Batch API line is billed at the
batch price whether cached or not, so the longer prefix would only cost more),
and the model's price is OpenAI's with a cached-input discount
(``Price.supports_prompt_cache``, from the hand-checked table or LiteLLM's
provider ``openai``; gpt-3.5-turbo has no discount, so padding would only cost
more, and Claude's cache needs ``cache_control`` markers). Everything else, the
bundled ``--local`` server included, gets ``per_unit``: grammar enums make
invalid tasks impossible there. Either is one setting away
(``prompt_layout = "shared"`` or ``"per_unit"``).

A run keeps the layout it began with: ``auto`` on a resumed run directory takes
the manifest's (one written before layouts existed used ``per_unit``).
"""

from __future__ import annotations

import xxhash

from dynogen.config import IDENTITY_BEFORE, PROMPT_LAYOUTS

__all__ = ["LAYOUTS", "LEGACY_LAYOUT", "cache_key", "choose_layout", "effective"]

LAYOUTS = PROMPT_LAYOUTS
# What a run directory written before prompt layouts existed used.
LEGACY_LAYOUT: str = IDENTITY_BEFORE["prompt_layout"]


def choose_layout(requested: str, *, openai_server: bool, online: bool,
                  cache_discount: bool) -> str:
    """The layout ``requested`` means for a run with these facts (``auto`` resolved).

    >>> choose_layout("auto", openai_server=True, online=True, cache_discount=True)
    'shared'
    >>> choose_layout("auto", openai_server=True, online=False, cache_discount=True)
    'per_unit'
    >>> choose_layout("shared", openai_server=False, online=True, cache_discount=False)
    'shared'
    """
    if requested != "auto":
        return requested
    return "shared" if openai_server and online and cache_discount else "per_unit"


def effective(layout: str) -> str:
    """The layout prompts are built with: an unresolved ``auto`` (a builder made before the
    run's facts were known) builds ``per_unit``, which needs no server to be right."""
    return "per_unit" if layout == "auto" else layout


def cache_key(layout: str, prefix: bytes) -> str:
    """A stable ``prompt_cache_key`` for one layout: it changes only when the shared prefix
    (``prefix``: the schema and the leading messages, serialized) does. Both prompt
    variants share the shared layout's prefix, so they share its key too."""
    return f"dynogen-{layout}-{xxhash.xxh3_64_hexdigest(prefix)[:12]}"
