"""The per-source cap: no dataset holds more than ``max_share`` of the kept tasks.

A corpus with one dataset of 200 configs would otherwise fill a run with
one family's tasks. The cap is the water level ``c`` at which every dataset
keeps ``min(n, c)`` tasks and ``c`` is ``max_share`` of the total kept: found
by bisection, deterministic, and the same on every resume. At least one task
per dataset is always kept, so a run of few datasets is not emptied.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["share_caps"]


def share_caps(counts: Mapping[str, int], max_share: float) -> dict[str, int]:
    """Tasks each dataset may keep: ``min(n, c)`` with ``c`` ≈ ``max_share`` of the total.

    >>> share_caps({"big": 90, "a": 5, "b": 5}, 0.5)
    {'big': 10, 'a': 5, 'b': 5}
    """
    if not counts:
        return {}
    lo, hi = 1, max(counts.values())
    while lo < hi:  # the largest c with c <= max_share * sum(min(n, c))
        mid = (lo + hi + 1) // 2
        total = sum(min(n, mid) for n in counts.values())
        if mid <= max_share * total:
            lo = mid
        else:
            hi = mid - 1
    return {k: min(n, lo) for k, n in counts.items()}
