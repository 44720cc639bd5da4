"""The hard cap on requests in flight when the user sets none.

Kept apart from the limiter's arithmetic because it is the one part that asks
the operating system: each request in flight holds a socket, so the cap comes
from the open-files limit (raised towards its hard value when we may).
"""

from __future__ import annotations

from typing import Final

__all__ = ["AUTO_MAX_SENDERS", "auto_max_senders"]

AUTO_MAX_SENDERS: Final = 4096  # hard cap on requests in flight when the user sets none
_FD_RESERVE: Final = 256  # open files kept for everything but sockets (journals, cache...)


def auto_max_senders() -> int:
    """The hard in-flight cap without ``--max-in-flight``: what the open-files limit allows.

    Each request in flight holds a socket. Enough for 30,000 RPM at several
    seconds an answer; the rate limits, not this cap, decide how many are used.
    A soft open-files limit below what we could use is raised towards the hard
    one (many systems default to a soft 1,024).
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = AUTO_MAX_SENDERS + _FD_RESERVE
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            if new > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return AUTO_MAX_SENDERS
    return max(16, min(AUTO_MAX_SENDERS, soft - _FD_RESERVE))
