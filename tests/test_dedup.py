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
