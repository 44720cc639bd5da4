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

__all__ = ["Stats", "UNIT_COUNTERS"]

# Flat counters a unit's journal line carries (summed on resume).
UNIT_COUNTERS = (
    "requests", "responses", "tasks_generated", "tasks_kept", "tokens_in", "tokens_out",
    "tokens_cached", "cost_micro_usd",
)


class Stats:
    """Run totals: plain counters plus reason breakdowns, merged from journal lines."""

    def __init__(self) -> None:
        # Unit statuses are counted as they come. Only failed units are remembered
        # (a resume redoes them, and the redo replaces the failure), so memory grows
        # with failures, not with the size of the run.
        self.units_by_status: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._failed_keys: dict[str, str] = {}
        self.flat: Counter[str] = Counter()
        self.responses_invalid: Counter[str] = Counter()
        self.requests_failed: Counter[str] = Counter()
        self.tasks_dropped: Counter[str] = Counter()
        self.instances = 0
        self.instances_skipped: Counter[str] = Counter()
        self.instance_duplicates = 0
        self.build_units: Counter[str] = Counter()
        self.truncated = 0
        self.tasks_over_max_share = 0

    def add_unit(self, rec: dict[str, Any]) -> None:
        """Fold one units.jsonl line into the totals."""
        key, status, reason = str(rec.get("key")), str(rec.get("status")), str(rec.get("reason"))
        earlier = self._failed_keys.pop(key, None)
        if earlier is not None:
            self.failed[earlier] -= 1
            self.units_by_status["failed"] -= 1
        self.units_by_status[status] += 1
        if status == "skipped":
            self.skipped[reason] += 1
        elif status == "failed":
            self.failed[reason] += 1
            self._failed_keys[key] = reason
        for k in UNIT_COUNTERS:
            self.flat[k] += int(rec.get(k) or 0)
        self.responses_invalid.update(rec.get("invalid") or {})
        self.requests_failed.update(rec.get("failed") or {})
        self.tasks_dropped.update(rec.get("dropped") or {})

    def add_build(self, rec: dict[str, Any]) -> None:
        """Fold one builds.jsonl line into the totals."""
        self.build_units[str(rec.get("status"))] += 1
        self.instances += int(rec.get("instances") or 0)
        self.instance_duplicates += int(rec.get("duplicates") or 0)
        self.instances_skipped.update(rec.get("skipped") or {})
        self.truncated += int(rec.get("truncated_around_answer") or 0)
        self.tasks_over_max_share += int(rec.get("tasks_over_max_share") or 0)

    def to_dict(self) -> dict[str, Any]:
        f = self.flat
        skipped = +self.skipped
        failed = +self.failed
        by = self.units_by_status
        processed = sum(by.values()) - by["skipped"] - by["failed"]
        return {
            "units": {
                "seen": sum(by.values()),
                "processed": processed,
                "skipped": sum(skipped.values()),
                "skipped_by_reason": dict(sorted(skipped.items())),
                "failed": sum(failed.values()),
                "failed_by_reason": dict(sorted(failed.items())),
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
                "skipped_by_reason": dict(sorted(self.instances_skipped.items())),
                "truncated_around_answer": self.truncated,
                "units_by_status": dict(sorted(self.build_units.items())),
            },
            "tokens": {"in": f["tokens_in"], "out": f["tokens_out"], "cached": f["tokens_cached"]},
            "committed_cost_usd": f["cost_micro_usd"] / 1e6,
        }
