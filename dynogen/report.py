"""Counters for report.json: what was seen, kept, dropped, and why.

Every counter a unit contributes is also written into its journal line, so
the report of a resumed run is the sum over journal lines — the same numbers
an uninterrupted run would give — rather than only what the last process saw.
Per-process figures (wall time, requests/s, cache hits) are kept apart under
``session``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dynogen.units import redo

__all__ = ["Stats", "UNIT_COUNTERS"]

# Flat counters a unit's journal line carries (summed on resume).
UNIT_COUNTERS = (
    "requests", "responses", "tasks_generated", "tasks_kept", "tokens_in", "tokens_out",
    "tokens_cached", "cost_micro_usd",
)


class Stats:
    """Run totals: plain counters plus reason breakdowns, merged from journal lines."""

    def __init__(self, *, retry_skipped: tuple[str, ...] = ()) -> None:
        # Unit statuses are counted as they come. Only records a resume redoes are
        # remembered (failed and retryable ones, and skips named by --retry-skipped): the
        # redo replaces them, so memory grows with those, not with the size of the run.
        self.retry_skipped = tuple(retry_skipped)
        self.units_by_status: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.retryable: Counter[str] = Counter()
        self._redo_units: dict[str, tuple[str, str]] = {}
        self._redo_builds: dict[str, dict[str, Any]] = {}
        self.flat: Counter[str] = Counter()
        self.responses_invalid: Counter[str] = Counter()
        self.requests_failed: Counter[str] = Counter()
        self.tasks_dropped: Counter[str] = Counter()
        self.instances = 0
        self.instances_skipped: Counter[str] = Counter()
        self.instance_duplicates = 0
        self.build_units: Counter[str] = Counter()
        self.build_retryable: Counter[str] = Counter()
        self.truncated = 0
        self.tasks_over_max_share = 0

    def _redone(self, status: str, reason: str) -> bool:
        if status in ("failed", "retryable"):
            return True
        return status in ("skipped", "unavailable") and redo(reason, self.retry_skipped)

    def _count_unit(self, status: str, reason: str, sign: int) -> None:
        self.units_by_status[status] += sign
        bucket = {"skipped": self.skipped, "failed": self.failed,
                  "retryable": self.retryable}.get(status)
        if bucket is not None:
            bucket[reason] += sign

    def add_unit(self, rec: dict[str, Any]) -> None:
        """Fold one units.jsonl line into the totals (a redo replaces what it redoes)."""
        key, status, reason = str(rec.get("key")), str(rec.get("status")), str(rec.get("reason"))
        earlier = self._redo_units.pop(key, None)
        if earlier is not None:
            self._count_unit(*earlier, -1)
        self._count_unit(status, reason, 1)
        if self._redone(status, reason):
            self._redo_units[key] = (status, reason)
        for k in UNIT_COUNTERS:
            self.flat[k] += int(rec.get(k) or 0)
        self.responses_invalid.update(rec.get("invalid") or {})
        self.requests_failed.update(rec.get("failed") or {})
        self.tasks_dropped.update(rec.get("dropped") or {})

    def _count_build(self, rec: dict[str, Any], sign: int) -> None:
        status = str(rec.get("status"))
        self.build_units[status] += sign
        if status == "retryable":
            self.build_retryable[str(rec.get("reason"))] += sign
        self.instances += sign * int(rec.get("instances") or 0)
        self.instance_duplicates += sign * int(rec.get("duplicates") or 0)
        for k, v in (rec.get("skipped") or {}).items():
            self.instances_skipped[k] += sign * int(v)
        self.truncated += sign * int(rec.get("truncated_around_answer") or 0)
        self.tasks_over_max_share += sign * int(rec.get("tasks_over_max_share") or 0)

    def add_build(self, rec: dict[str, Any]) -> None:
        """Fold one builds.jsonl line into the totals (a rebuild replaces what it redoes)."""
        key = str(rec.get("key"))
        earlier = self._redo_builds.pop(key, None)
        if earlier is not None:
            self._count_build(earlier, -1)
        self._count_build(rec, 1)
        if self._redone(str(rec.get("status")), str(rec.get("reason"))):
            self._redo_builds[key] = rec

    def to_dict(self) -> dict[str, Any]:
        f = self.flat
        skipped = +self.skipped
        failed = +self.failed
        retryable = +self.retryable
        by = +self.units_by_status
        processed = sum(by.values()) - by["skipped"] - by["failed"] - by["retryable"]
        return {
            "units": {
                "seen": sum(by.values()),
                "processed": processed,
                "skipped": sum(skipped.values()),
                "skipped_by_reason": dict(sorted(skipped.items())),
                "failed": sum(failed.values()),
                "failed_by_reason": dict(sorted(failed.items())),
                # a transient failure (429, 5xx, timeout, offline): redone by the next resume
                "retryable": sum(retryable.values()),
                "retryable_by_reason": dict(sorted(retryable.items())),
            },
            "requests": f["requests"],
            "responses": f["responses"],
            "responses_invalid_by_reason": dict(sorted(self.responses_invalid.items())),
            "requests_failed_by_reason": dict(sorted(self.requests_failed.items())),
            "tasks": {
                "generated": f["tasks_generated"],
                "kept": f["tasks_kept"],
                "dropped": sum(self.tasks_dropped.values()),
                "dropped_by_reason": dict(sorted(self.tasks_dropped.items())),
                "over_max_share": self.tasks_over_max_share,
            },
            "instances": {
                "written": self.instances,
                "duplicates": self.instance_duplicates,
                "skipped_by_reason": dict(sorted((+self.instances_skipped).items())),
                "truncated_around_answer": self.truncated,
                "units_by_status": dict(sorted((+self.build_units).items())),
                "retryable_by_reason": dict(sorted((+self.build_retryable).items())),
            },
            "tokens": {"in": f["tokens_in"], "out": f["tokens_out"], "cached": f["tokens_cached"]},
            "committed_cost_usd": f["cost_micro_usd"] / 1e6,
        }
