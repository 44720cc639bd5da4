"""Anthropic's rate-limit headers, read as the limiter reads OpenAI's (pure, no I/O).

Anthropic limits requests, input tokens and output tokens per minute, each a
bucket that refills continuously, and describes each on every answer::

    anthropic-ratelimit-requests-limit: 4000
    anthropic-ratelimit-requests-remaining: 3999
    anthropic-ratelimit-requests-reset: 2026-12-08T10:15:30.25Z      (RFC 3339: when full)
    anthropic-ratelimit-input-tokens-{limit,remaining,reset}      (remaining: to the 1,000)
    anthropic-ratelimit-output-tokens-{limit,remaining,reset}
    retry-after: 7                                                   (on 429)

``dynogen.ratelimit`` reads OpenAI's ``x-ratelimit-*`` names with durations, and
has one token kind. ``split`` rewrites one answer's headers as two OpenAI-style
sets: requests and input tokens for the limiter that paces both, output tokens
for the one that paces those (``execute.limits.SplitLimiter``). A reset time
becomes seconds measured against the answer's own ``Date`` header, as the
limiter's reading of an HTTP-date ``retry-after`` is, so no local wall clock is
involved; without a ``Date`` the reset is left out (the limiter then keeps its
corrections a full minute). What the limiter itself should accept, one day,
instead: a third resource (output tokens) with its own limit, reserved at
``max_tokens`` and refunded to what was generated, and these header names.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import datetime

__all__ = ["PREFIX", "parse_time", "split"]

PREFIX = "anthropic-ratelimit-"
_KINDS = {"requests": "requests", "input-tokens": "tokens"}


def parse_time(text: str) -> float | None:
    """Unix seconds of an RFC 3339 time (``2026-12-08T10:15:30.25Z``), else ``None``."""
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _date(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("date") or headers.get("Date")
    if not raw:
        return None
    try:
        return email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _reset(text: str, sent: float | None) -> str | None:
    at = parse_time(text)
    if at is None or sent is None or not math.isfinite(at):
        return None
    return f"{max(0.0, at - sent):.3f}s"


def split(headers: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(requests + input tokens, output tokens) as ``x-ratelimit-*`` headers; ``retry-after``
    goes with both. Headers of another kind are ignored; unreadable values are passed on
    for the limiter to count as invalid."""
    main: dict[str, str] = {}
    out: dict[str, str] = {}
    sent = None
    for key, value in headers.items():
        k = key.lower()
        if k in ("retry-after", "retry-after-ms"):
            main[k] = out[k] = value
            continue
        if not k.startswith(PREFIX):
            continue
        kind, _, field = k[len(PREFIX):].rpartition("-")
        if kind == "output-tokens":
            target, name = out, "tokens"
        elif kind in _KINDS:
            target, name = main, _KINDS[kind]
        else:
            continue
        if field in ("limit", "remaining"):
            target[f"x-ratelimit-{field}-{name}"] = value
        elif field == "reset":
            if sent is None:
                sent = _date(headers)
            reset = _reset(value, sent)
            if reset is not None:
                target[f"x-ratelimit-reset-{name}"] = reset
    return main, out
