"""Parsing the rate-limit headers of OpenAI-compatible servers."""

from __future__ import annotations

import pytest

from dynogen.ratelimit.headers import (
    RateLimitHeaders,
    parse_duration,
    parse_rate_limit_headers,
    rate_limit_kind,
    retry_after_seconds,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("1m30s", 90.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("1500ns", 1.5e-6),
        ("2h", 7200.0),
        ("17", 17.0),
        ("0.25", 0.25),
        (".5s", 0.5),
        (" 3s ", 3.0),
    ],
)
def test_every_duration_format(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1s", "1x", "1 s", "s", "1s2", "inf", "nan", "1e3"])
def test_unreadable_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_all_headers_are_read_whatever_their_case() -> None:
    info = parse_rate_limit_headers({
        "X-RateLimit-Limit-Requests": "500",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-requests": "499",
        "X-RATELIMIT-REMAINING-TOKENS": "199000",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-reset-tokens": "6m0s",
        "content-type": "application/json",
    })
    assert info == RateLimitHeaders(500, 200_000, 499, 199_000, 0.12, 360.0, None, ())
    assert not info.empty


def test_no_rate_limit_headers_is_empty() -> None:
    info = parse_rate_limit_headers({"content-type": "application/json"})
    assert info.empty and info.invalid == ()


def test_unreadable_values_are_named_not_raised() -> None:
    info = parse_rate_limit_headers({
        "x-ratelimit-limit-requests": "0",
        "x-ratelimit-remaining-tokens": "-3",
        "x-ratelimit-reset-tokens": "later",
        "x-ratelimit-remaining-requests": "12",
        "retry-after": "whenever",
    })
    assert info.remaining_requests == 12
    assert info.limit_requests is None and info.remaining_tokens is None
    assert set(info.invalid) == {"x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens",
                                 "x-ratelimit-reset-tokens", "retry-after"}


def test_retry_after_ms_wins_over_retry_after_and_resets() -> None:
    h = {"retry-after-ms": "1500", "retry-after": "7", "x-ratelimit-reset-requests": "20s"}
    assert retry_after_seconds(h) == 1.5
    assert retry_after_seconds({"retry-after": "7", "x-ratelimit-reset-requests": "20s"}) == 7.0


def test_retry_after_as_an_http_date_is_measured_against_the_answer_date() -> None:
    h = {"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT", "date": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert retry_after_seconds(h) == 30.0
    lone = parse_rate_limit_headers({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"})
    assert lone.retry_after is None and lone.invalid == ("retry-after",)


def test_reset_header_of_the_limit_that_was_hit() -> None:
    h = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s",
         "x-ratelimit-remaining-requests": "10", "x-ratelimit-remaining-tokens": "0"}
    assert retry_after_seconds(h, "requests") == 2.0
    assert retry_after_seconds(h, "tokens") == 360.0
    assert retry_after_seconds(h) == 360.0  # unknown: tokens are the ones spent
    neither = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_seconds(neither) == 2.0  # nothing spent: the shorter wait
    assert retry_after_seconds({}) is None


def test_kind_from_headers() -> None:
    assert rate_limit_kind(RateLimitHeaders(remaining_requests=0)) == "requests"
    assert rate_limit_kind(RateLimitHeaders(remaining_requests=3, remaining_tokens=0)) == "tokens"
    assert rate_limit_kind(RateLimitHeaders(remaining_requests=3)) == "unknown"
