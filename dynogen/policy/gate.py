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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dynogen.instances.render import row_facts
from dynogen.io.rows import RowsUnavailable, open_rows
from dynogen.policy.languages import LanguagePolicy
from dynogen.policy.licenses import LicensePolicy
from dynogen.policy.splits import SplitPolicy
from dynogen.units import Skipped, Unit, skip_reason

__all__ = ["CHECK_ROWS", "Policies", "gate", "NO_TRAINING_SPLIT"]

CHECK_ROWS = 60
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


def gate(source: Iterable[Unit | Skipped], policies: Policies, *, rows_per_split: int = 200,
         opener: Opener | None = None, cache_dir: str | None = None,
         check_rows: bool = True) -> Iterator[Unit | Skipped]:
    """``source`` with refused units turned into ``Skipped`` and row facts attached."""
    for item in source:
        if isinstance(item, Skipped) or skip_reason(item) is not None:
            yield item  # the engine counts these by their own reason
            continue
        reason = policies.card_refusal(item)
        if reason:
            yield Skipped(item.dataset, item.config, reason, f"license={item.license!r}"
                          if reason.startswith("license") else "")
            continue
        if item.data_ref and check_rows:
            yield _with_rows(item, policies, rows_per_split, opener, cache_dir)
        else:
            yield item


def _with_rows(unit: Unit, policies: Policies, rows_per_split: int, opener: Opener | None,
               cache_dir: str | None) -> Unit | Skipped:
    open_ = opener or open_rows
    data_ref = unit.data_ref or ""
    n = max(1, min(CHECK_ROWS, rows_per_split))
    labels: dict[str, tuple[str, ...]]
    if unit.origin == "hub" and unit.samples:
        # The Hub source read these rows from the dataset viewer, which also said the
        # dataset is valid: they are proof of readable rows without downloading data files.
        sample = list(unit.samples)
        labels = {f.name: f.labels for f in unit.fields if f.labels}
    else:
        try:
            rows = open_(data_ref, unit.config, splits=unit.splits or None, rows_per_split=n,
                         allow=policies.splits.allows, cache_dir=cache_dir)
            sample = [row for _, row in rows]
        except RowsUnavailable as e:
            why = e.reason if e.reason == NO_TRAINING_SPLIT else "rows_" + e.reason
            return Skipped(unit.dataset, unit.config, why, e.detail[:300])
        labels = dict(rows.info.labels)
    if not sample:
        return Skipped(unit.dataset, unit.config, "rows_empty", f"{data_ref}: no rows")
    types = " ".join(f.type for f in unit.fields)
    reason = policies.languages.refusal(unit.tags, unit.config, types, sample)
    if reason:
        return Skipped(unit.dataset, unit.config, reason, "from the rows' text")
    extra = {**unit.extra, "facts": row_facts(sample, labels), "row_labels": labels}
    return dataclasses.replace(unit, extra=extra)
