from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dynogen.dedup import HashSet, normalize_text, text_hash


def test_normalisation_ignores_case_punctuation_space() -> None:
    assert text_hash("Classify the  review!") == text_hash("classify the review")
    assert text_hash("Classify the review") != text_hash("Summarise the review")
    assert normalize_text("  A,B\n c ") == "a b c"


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=3000))
def test_hashset_matches_a_set(values: list[int]) -> None:
    hs = HashSet(buffer_size=64)
    ref: set[int] = set()
    for v in values:
        assert hs.add(v) == (v not in ref)
        ref.add(v)
    assert len(hs) == len(ref)
    for v in values[:100]:
        assert v in hs


def test_hashset_memory_is_compact() -> None:
    rng = random.Random(1)
    hs = HashSet()
    n = 200_000
    for _ in range(n):
        hs.add(rng.getrandbits(64))
    per_hash = hs.nbytes() / len(hs)
    # A Python set of ints costs ~70 B a hash; the sorted runs cost ~8.
    assert per_hash < 12, per_hash
    assert len(hs._runs) <= 20


def _regex_normalize(text: str) -> str:
    """The definition normalize_text implements faster: task ids and dedup hashes of
    existing runs depend on it staying the same."""
    import re

    text = re.sub(r"[^\w\s]+", " ", text.casefold())
    return re.sub(r"\s+", " ", text).strip()


def test_normalize_text_is_the_regex_definition_on_every_code_point() -> None:
    points = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    for i in range(0, len(points), 4096):  # each point alone between letters, and in runs
        chunk = points[i:i + 4096]
        t = "a".join(chunk) + " " + "".join(chunk)
        assert normalize_text(t) == _regex_normalize(t), hex(ord(chunk[0]))


@given(st.text(alphabet=st.sampled_from(list(" \t\n\xa0\u2003\u3000.,!?-_'\"aZé9ß\u0130")),
               max_size=40))
def test_normalize_text_matches_the_regex_definition(text: str) -> None:
    assert normalize_text(text) == _regex_normalize(text)
