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
        # Last status per unit key: a unit that failed and was redone on resume counts once.
        self.unit_status: dict[str, tuple[str, str]] = {}
        self.flat: Counter[str] = Counter()
        self.responses_invalid: Counter[str] = Counter()
        self.requests_failed: Counter[str] = Counter()
        self.tasks_dropped: Counter[str] = Counter()
        self.instances = 0
        self.instances_skipped: Counter[str] = Counter()
        self.instance_duplicates = 0
        self.build_units: Counter[str] = Counter()

    def add_unit(self, rec: dict[str, Any]) -> None:
        """Fold one units.jsonl line into the totals."""
        self.unit_status[str(rec.get("key"))] = (str(rec.get("status")), str(rec.get("reason")))
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

    def to_dict(self) -> dict[str, Any]:
        f = self.flat
        skipped: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        processed = 0
        for status, reason in self.unit_status.values():
            if status == "skipped":
                skipped[reason] += 1
            elif status == "failed":
                failed[reason] += 1
            else:
                processed += 1
        return {
            "units": {
                "seen": len(self.unit_status),
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
            },
            "instances": {
                "written": self.instances,
                "duplicates": self.instance_duplicates,
                "skipped_by_reason": dict(sorted(self.instances_skipped.items())),
                "units_by_status": dict(sorted(self.build_units.items())),
            },
            "tokens": {"in": f["tokens_in"], "out": f["tokens_out"], "cached": f["tokens_cached"]},
            "committed_cost_usd": f["cost_micro_usd"] / 1e6,
        }
