"""Token counts against values OpenAI published, and truncation that stays valid text."""

from __future__ import annotations

import json
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynogen.errors import ConfigError
from dynogen.prompts.tokens import (
    GPT35_TURBO_0301_FORMAT,
    KNOWN_ENCODINGS,
    RESPONSE_FORMAT_OVERHEAD,
    TokenCounter,
)

O200K = TokenCounter("o200k_base")
CL100K = TokenCounter("cl100k_base")

# The example conversation of OpenAI's cookbook "How to count tokens with
# tiktoken" (examples/How_to_count_tokens_with_tiktoken.ipynb), whose counts the
# cookbook checked against the API's usage.prompt_tokens.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": (
            "You are a helpful, pattern-following assistant that"
            " translates corporate jargon into plain English."
        ),
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": (
            "Let's circle back when we have more bandwidth to touch"
            " base on opportunities for increased leverage."
        ),
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": (
            "This late pivot means we don't have time to boil the ocean for the client deliverable."
        ),
    },
]


def test_known_token_ids() -> None:
    assert O200K.encode("hello world") == [24912, 2375]
    assert CL100K.encode("hello world") == [15339, 1917]
    # cookbook section 3 and 5
    assert CL100K.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert CL100K.count("お誕生日おめでとう") == 9
    assert O200K.encode("お誕生日おめでとう") == [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]
    assert O200K.count("hello world") == 2
    assert O200K.count("") == 0


def test_cookbook_chat_counts() -> None:
    assert O200K.count_messages(COOKBOOK_MESSAGES) == 124  # gpt-4o, gpt-4o-mini
    assert CL100K.count_messages(COOKBOOK_MESSAGES) == 129  # gpt-3.5-turbo-0125, gpt-4
    legacy = TokenCounter("cl100k_base", **GPT35_TURBO_0301_FORMAT)
    assert legacy.count_messages(COOKBOOK_MESSAGES) == 127  # gpt-3.5-turbo-0301


def test_message_framing() -> None:
    msg = {"role": "user", "content": "hello world"}
    assert O200K.count_message(msg) == 3 + 1 + 2
    assert O200K.count_messages([msg]) == 3 + 1 + 2 + 3
    named = {**msg, "name": "bob"}
    assert O200K.count_message(named) == O200K.count_message(msg) + O200K.count("bob") + 1
    assert O200K.count_messages([]) == 3
    with pytest.raises(TypeError, match="content"):
        O200K.count_message({"role": "user", "content": None})  # type: ignore[dict-item]


def test_shared_prefix_counted_once_adds_up() -> None:
    prefix, rest = COOKBOOK_MESSAGES[:5], COOKBOOK_MESSAGES[5:]
    shared = O200K.count_prefix(prefix)
    assert O200K.count_messages(rest, prefix_tokens=shared) == O200K.count_messages(
        COOKBOOK_MESSAGES
    )


def test_response_format_estimate() -> None:
    msgs = COOKBOOK_MESSAGES[-1:]
    schema = {
        "name": "tasks",
        "strict": True,
        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }
    rf = {"type": "json_schema", "json_schema": schema}
    extra = O200K.count_messages(msgs, response_format=rf) - O200K.count_messages(msgs)
    assert extra == O200K.count(json.dumps(schema)) + RESPONSE_FORMAT_OVERHEAD
    assert O200K.count_response_format({"type": "json_object"}) == 0
    assert O200K.count_response_format(None) == 0


def test_remembered_counts_are_the_counts_of_each_text() -> None:
    """Long texts' counts are remembered (requests repeat their system prompt and
    few-shot turns); texts of equal length must still be counted apart, and the
    memory stays bounded."""
    import dynogen.prompts.tokens as tokens

    fresh = TokenCounter("o200k_base")
    rng = random.Random(3)
    texts = ["".join(rng.choice(string.ascii_letters + " .,") for _ in range(400))
             for _ in range(50)]
    texts += ["a" * 400, "a " * 200, "ab" * 200]  # same length, very different counts
    expect = [len(fresh.encode(t)) for t in texts]
    assert len(set(expect[-3:])) == 3
    for _ in range(3):
        assert [fresh.count(t) for t in texts] == expect
    # Schemas of the same size but different content count apart too.
    a = {"type": "json_schema", "json_schema": {"name": "x" * 300, "v": 1}}
    b = {"type": "json_schema", "json_schema": {"name": "x " * 150, "v": 1}}
    assert fresh.count_response_format(a) != fresh.count_response_format(b)
    assert fresh.count_response_format(a) == (
        fresh.count(json.dumps(a["json_schema"])) + RESPONSE_FORMAT_OVERHEAD)
    for i in range(tokens._MEMO_ENTRIES + 10):
        fresh._remember((i, i), 1)
    assert len(fresh._memo) <= tokens._MEMO_ENTRIES


def test_unknown_encoding_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as ei:
        TokenCounter("p50k_base")
    for name in KNOWN_ENCODINGS:
        assert name in str(ei.value)


def test_encoder_is_shared() -> None:
    assert TokenCounter("o200k_base").enc is TokenCounter("o200k_base").enc


def test_special_token_text_and_surrogates_are_ordinary_text() -> None:
    assert O200K.count("<|endoftext|>") > 1
    assert O200K.count("a\udc80b") == O200K.count("a\ufffdb")


# -- long texts: counted in pieces, exactly ----------------------------------------------


def _prose(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    words = [
        "data",
        "set",
        "the",
        "Question",
        "answer",
        "label",
        "日本語",
        "ünïcode",
        "123",
        "—",
        "e.g.",
    ]
    out: list[str] = []
    size = 0
    while size < n_chars:
        w = rng.choice(words)
        sep = rng.choice([" ", " ", " ", "\n", ", ", ".\n\n"])
        out.append(w + sep)
        size += len(w) + len(sep)
    return "".join(out)


@pytest.mark.parametrize("counter", [O200K, CL100K], ids=lambda c: c.encoding)
def test_long_text_count_matches_one_shot_encoding(counter: TokenCounter) -> None:
    text = _prose(300_000, seed=1)  # pieces of 40,000 chars; one shot is still allowed
    assert counter.count(text) == len(counter.enc.encode_ordinary(text))
    assert counter.encode(text) == counter.enc.encode_ordinary(text)


def test_text_beyond_the_library_limit_is_counted() -> None:
    text = _prose(1_200_000, seed=2)  # bpe_openai alone refuses >= 1,000,000 characters
    cut = text.index("\nQuestion", 600_000) + 1
    assert O200K.count(text) == O200K.count(text[:cut]) + O200K.count(text[cut:])


def test_minified_blob_is_counted_nearly_exactly() -> None:
    rng = random.Random(3)
    blob = "".join(rng.choice(string.ascii_letters + string.digits + "{}:,") for _ in range(90_000))
    assert abs(O200K.count(blob) - len(O200K.enc.encode_ordinary(blob))) <= 4


letters = st.characters(categories=["Lu", "Ll", "Lt", "Lm", "Lo"])
texts = st.text(max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    a=texts, b=texts, first=letters, last=letters, nl=st.sampled_from(["\n", "\r\n", " \n", "!\n"])
)
def test_pieces_split_where_pretokenizers_split(
    a: str, b: str, first: str, last: str, nl: str
) -> None:
    """The two seams ``_split_point`` cuts at give the same count apart as together."""
    for c in (O200K, CL100K):
        left, right = a + nl, first + b
        assert c.count(left + right) == c.count(left) + c.count(right)
        left, right = a + last, " " + first + b
        assert c.count(left + right) == c.count(left) + c.count(right)


# -- truncate ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), max_tokens=st.integers(0, 60))
def test_truncate_is_a_fitting_valid_prefix(text: str, max_tokens: int) -> None:
    for c in (O200K, CL100K):
        out = c.truncate(text, max_tokens)
        assert text.startswith(out)
        assert c.count(out) <= max_tokens
        out.encode("utf-8")  # valid unicode: no half characters, no lone surrogates
        if c.count(text) <= max_tokens:
            assert out == text


def test_truncate_keeps_close_to_the_budget() -> None:
    text = _prose(20_000, seed=4)
    out = O200K.truncate(text, 500)
    assert 495 <= O200K.count(out) <= 500


def test_truncate_does_not_cut_a_character_in_half() -> None:
    text = "🦕" * 10  # 3 tokens per dinosaur in o200k_base: cuts inside a character
    for n in range(0, 12):
        out = O200K.truncate(text, n)
        assert set(out) <= {"🦕"} and "\ufffd" not in out
        assert O200K.count(out) <= n


def test_truncate_huge_text_reads_only_its_head() -> None:
    text = _prose(3_000_000, seed=5)
    out = O200K.truncate(text, 900)
    assert text.startswith(out) and 890 <= O200K.count(out) <= 900


# -- the light loader ---------------------------------------------------------------------


def test_counting_never_imports_the_bpe_openai_package() -> None:
    """The package's __init__ decodes three vocabularies into dicts (~1 s, ~75 MB);
    the Rust tokenizer alone is what counting needs."""
    import subprocess
    import sys

    code = ("import sys, dynogen.prompts.tokens as t; n = t.TokenCounter().count('hello world'); "
            "print(n, 'bpe_openai' in sys.modules, 'bpe_openai.compat' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["2", "False", "False"]


def test_the_light_loader_counts_as_the_package_does() -> None:
    import bpe_openai

    rng = random.Random(8)
    alphabet = string.printable + "éü日本語🦕\u00a0’"
    for name in KNOWN_ENCODINGS:
        ref = bpe_openai.get_encoding(name)
        assert max(len(b) for b in ref.token_byte_values()) == 128  # _LONGEST_TOKEN_BYTES
        ours = TokenCounter(name)
        for _ in range(200):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
            assert ours.encode(text) == ref.encode_ordinary(text)
            assert ours.count(text) == len(ref.encode_ordinary(text))
