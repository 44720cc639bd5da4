"""Data policies applied to units before any request is sent.

``gate`` wraps a source: each ``Unit`` the licence, split or language policy
refuses becomes a ``Skipped`` with a counted reason, so no request is paid for
data a user cannot train on. A unit that points at rows (``data_ref``: a data
folder, a Hub dataset) has them opened here: rows that cannot be read skip
the unit (``rows_<reason>``) before its requests; rows that can are sampled
into ``unit.extra["facts"]`` (see ``dynogen.instances.render.row_facts``) for the task
rules that need them (imbalance, constant output, output equal to an input,
id-like outputs, the true label suffix). Metadata-only units (no
``data_ref``) are judged on their card alone.

``run`` and ``estimate`` both go through ``gate``, so the estimate's figures
are what ``run`` sends. The order of checks is fixed (licence, splits,
language tags, rows, language content) and each unit is counted under the
first policy that refuses it.

Rows are checked concurrently: the gate runs its checks on an event loop of
its own (``io.prefetch.ordered_prefetch``) through a ``RowReader`` made there
(``reader``: Hub datasets as many at once as their rate-limit buckets allow,
with the Hub calls' retries; local folders one at a time), and yields units in
source order. A check that still fails on a transient error (a 429, a 5xx, a
timeout, a reset) skips the unit under a transient reason (``rows_timeout``...),
which the engine journals ``retryable``: the next resume checks it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dynogen.instances.render import row_facts
from dynogen.io.prefetch import ordered_prefetch
from dynogen.io.row_reader import RowReader
from dynogen.io.rows import RowsUnavailable, open_rows
from dynogen.policy.languages import LanguagePolicy
from dynogen.policy.licenses import LicensePolicy
from dynogen.policy.splits import SplitPolicy
from dynogen.units import Skipped, Unit, skip_reason

__all__ = ["CHECK_ROWS", "CHECK_AHEAD", "Policies", "gate", "NO_TRAINING_SPLIT"]

CHECK_ROWS = 60
CHECK_AHEAD = 32  # units whose rows are checked at once
NO_TRAINING_SPLIT = "no_training_split"


@dataclass(frozen=True, slots=True)
class Policies:
    """The three data policies of a run, parsed once from its ``Config``."""

    licenses: LicensePolicy
    languages: LanguagePolicy
    splits: SplitPolicy

    @classmethod
    def from_config(cls, cfg: Any) -> Policies:
        return cls(LicensePolicy.parse(cfg.licenses), LanguagePolicy.parse(cfg.languages),
                   SplitPolicy.parse(cfg.splits))

    def card_refusal(self, unit: Unit) -> str | None:
        """The first policy that refuses ``unit`` from its metadata alone, or ``None``."""
        reason = self.licenses.refusal(unit.license)
        if reason:
            return reason
        if unit.splits and not self.splits.select(unit.splits):
            return NO_TRAINING_SPLIT
        types = " ".join(f.type for f in unit.fields)
        return self.languages.refusal(unit.tags, unit.config, types, unit.samples)

    def describe(self) -> dict[str, str]:
        return {"licenses": self.licenses.describe(), "languages": self.languages.describe(),
                "splits": self.splits.describe()}


Opener = Callable[..., Any]
ReaderFactory = Callable[[], RowReader]


def gate(source: Iterable[Unit | Skipped], policies: Policies, *, rows_per_split: int = 200,
         opener: Opener | None = None, cache_dir: str | None = None,
         check_rows: bool = True, reader: ReaderFactory | None = None,
         ahead: int = CHECK_AHEAD) -> Iterator[Unit | Skipped]:
    """``source`` with refused units turned into ``Skipped`` and row facts attached.

    ``reader`` makes the ``RowReader`` the row checks use (called on the gate's own
    loop); without one, every ``data_ref`` goes to ``opener`` (``open_rows``).
    """
    if not check_rows:
        for item in source:
            yield _card_check(item, policies) or item
        return
    make = reader or (lambda: RowReader(cache_dir=cache_dir, opener=opener or open_rows))
    job = _GateJob(source, policies, max(1, min(CHECK_ROWS, rows_per_split)), make)
    yield from ordered_prefetch(job, window=max(1, ahead))


def _card_check(item: Unit | Skipped, policies: Policies) -> Skipped | None:
    """The unit refused from its metadata alone, or ``None`` (a skip passes as it is)."""
    if isinstance(item, Skipped) or skip_reason(item) is not None:
        return None  # the engine counts these by their own reason
    reason = policies.card_refusal(item)
    if reason:
        return Skipped(item.dataset, item.config, reason, f"license={item.license!r}"
                       if reason.startswith("license") else "")
    return None


class _GateJob:
    """``ordered_prefetch``'s job: the source's items in, each checked (rows read) out."""

    def __init__(self, source: Iterable[Unit | Skipped], policies: Policies, n: int,
                 make: ReaderFactory) -> None:
        self.source = source
        self.policies = policies
        self.n = n
        self.make = make
        self.reader: RowReader | None = None

    async def items(self) -> AsyncIterator[Unit | Skipped]:
        it = iter(self.source)
        size = 1  # chunks grow 1, 2, 4 ... 64: a slow source (the Hub) gives its first at once
        while True:
            chunk = await asyncio.to_thread(_take, it, size)
            if not chunk:
                return
            size = min(64, 2 * size)
            for item in chunk:
                yield item

    async def fetch(self, item: Unit | Skipped) -> Unit | Skipped:
        refused = _card_check(item, self.policies)
        if refused is not None:
            return refused
        if isinstance(item, Skipped) or skip_reason(item) is not None or not item.data_ref:
            return item
        if item.origin == "hub" and item.samples:
            # The Hub source read these rows from the dataset viewer, which also said the
            # dataset is valid: they are proof of readable rows without reading more.
            labels = {f.name: f.labels for f in item.fields if f.labels}
            return _judged(item, self.policies, list(item.samples), labels)
        if self.reader is None:
            self.reader = self.make()
        try:
            rows = await self.reader.read(item.data_ref, item.config,
                                          splits=item.splits or None, rows_per_split=self.n,
                                          allow=self.policies.splits.allows)
        except RowsUnavailable as e:
            why = e.reason if e.reason == NO_TRAINING_SPLIT else "rows_" + e.reason
            return Skipped(item.dataset, item.config, why, e.detail[:300])
        return _judged(item, self.policies, [row for _, row in rows], dict(rows.info.labels))

    async def aclose(self) -> None:
        if self.reader is not None:
            await self.reader.aclose()


def _take(it: Iterator[Unit | Skipped], n: int) -> list[Unit | Skipped]:
    return list(itertools.islice(it, n))


def _judged(unit: Unit, policies: Policies, sample: list[dict[str, Any]],
            labels: dict[str, tuple[str, ...]]) -> Unit | Skipped:
    """``unit`` with its row facts, or the skip its rows call for (none; the wrong language)."""
    if not sample:
        return Skipped(unit.dataset, unit.config, "rows_empty", f"{unit.data_ref}: no rows")
    types = " ".join(f.type for f in unit.fields)
    reason = policies.languages.refusal(unit.tags, unit.config, types, sample)
    if reason:
        return Skipped(unit.dataset, unit.config, reason, "from the rows' text")
    extra = {**unit.extra, "facts": row_facts(sample, labels), "row_labels": labels}
    return dataclasses.replace(unit, extra=extra)
