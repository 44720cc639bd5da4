"""Which splits instances may come from: training-like by default, never test-like.

Instruction data made from a benchmark's test rows contaminates every
evaluation on that benchmark, so by default instances come from splits whose
name marks them as training or validation data (``train``, ``validation``,
``dev``, ``val``, ``train.9h``, ``validation_matched``...) and never from a
split whose name marks it as test (``test``, ``test.en``,
``challenge_test_covid``, ``testb``...), whatever else the name says. Other
names (``default``, ``full``, ``other``) are not training-like by name and
are left out unless asked for.

``--splits`` takes split names and the classes ``train`` and ``validation``
(the default is both classes), or ``all``. A test-like split is read only when
named exactly, or with ``all``. Held-out *tasks* are a separate matter
(``heldout_fraction``): they are decided per task, not per row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dynogen.errors import ConfigError

__all__ = ["DEFAULT_SPLITS", "SplitPolicy", "split_kind"]

DEFAULT_SPLITS = "train,validation"
_TOKENS = re.compile(r"[a-z]+")
_TEST = {"test", "tests", "testing", "testa", "testb", "heldout", "held", "blind", "hidden",
         "eval", "evaluation", "benchmark"}
_TRAIN = {"train", "training", "trn", "auxiliary"}
_VALID = {"validation", "valid", "val", "dev", "development", "validated"}


def split_kind(name: str) -> str:
    """``test``, ``train``, ``validation`` or ``other`` from the split's name alone."""
    tokens = set(_TOKENS.findall(name.lower()))
    if tokens & _TEST or name.lower().startswith("test"):
        return "test"
    if "invalidated" in tokens:
        return "other"
    if tokens & _TRAIN:
        return "train"
    if tokens & _VALID:
        return "validation"
    return "other"


@dataclass(frozen=True, slots=True)
class SplitPolicy:
    """Kinds and exact names allowed, or every split (``all``).

    >>> p = SplitPolicy.parse(None)
    >>> p.select(("train", "validation", "test", "challenge_test"))
    ('train', 'validation')
    """

    kinds: frozenset[str]
    names: frozenset[str]
    all: bool = False

    @classmethod
    def parse(cls, spec: str | list[str] | tuple[str, ...] | None) -> SplitPolicy:
        raw = spec if spec is not None else DEFAULT_SPLITS
        items = [s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw)
                 if str(s).strip()]
        if not items:
            raise ConfigError("--splits is empty: name splits, 'train', 'validation' or 'all'")
        if "all" in items:
            return cls(frozenset(), frozenset(), all=True)
        kinds = {i for i in items if i in ("train", "validation")}
        return cls(frozenset(kinds), frozenset(items))

    def allows(self, split: str) -> bool:
        if self.all or split in self.names:
            return True
        return split_kind(split) in self.kinds

    def select(self, splits: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """The allowed splits among ``splits``, in their order."""
        return tuple(s for s in splits if self.allows(s))

    def describe(self) -> str:
        return "all" if self.all else ",".join(sorted(self.names))
