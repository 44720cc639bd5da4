"""Retry delays: full-jitter exponential backoff, bounded, honouring retry-after."""

from __future__ import annotations

import random

import pytest

from dynogen.errors import ConfigError
from dynogen.ratelimit.backoff import (
    BASE_DELAY,
    MAX_DELAY,
    MAX_RETRIES,
    MAX_RETRY_AFTER,
    RetryPolicy,
    retry_delay,
)


def test_ceiling_doubles_until_the_cap() -> None:
    top = [retry_delay(a, rng=lambda: 1.0) for a in range(1, 10)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    assert retry_delay(4, rng=lambda: 0.0) == 0.0
    assert retry_delay(4, rng=lambda: 0.25) == 1.0
    rng = random.Random(3)
    draws = [retry_delay(5, rng=rng.random) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    assert 3.5 < sum(draws) / len(draws) < 4.5  # uniform: mean is half the ceiling
    assert len(set(draws)) > 1900  # spread out, not lockstep


def test_server_retry_after_is_honoured_and_bounded() -> None:
    assert retry_delay(1, 12.5, rng=lambda: 0.0) == 12.5
    assert retry_delay(1, 0.0) == 0.0
    assert retry_delay(1, 10_000.0) == MAX_RETRY_AFTER
    # a nonsense value falls back to backoff
    assert retry_delay(2, float("nan"), rng=lambda: 1.0) == 1.0
    assert retry_delay(2, -3.0, rng=lambda: 1.0) == 1.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert retry_delay(10_000, rng=lambda: 1.0) == MAX_DELAY


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        retry_delay(0)


def test_policy_defaults_are_the_module_constants() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.base, policy.cap) == (MAX_RETRIES, BASE_DELAY, MAX_DELAY)
    assert list(policy.delays(rng=lambda: 1.0)) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_policy_bounds_the_number_of_tries() -> None:
    policy = RetryPolicy(max_retries=2, base=1.0, cap=10.0)
    assert [policy.should_retry(a) for a in (0, 1, 2, 3)] == [False, True, True, False]
    assert len(list(policy.delays())) == 2
    assert list(RetryPolicy(max_retries=0).delays()) == []


def test_policy_delay_uses_its_own_settings() -> None:
    policy = RetryPolicy(base=2.0, cap=5.0, max_retry_after=20.0)
    assert policy.delay(3, rng=lambda: 1.0) == 5.0
    assert policy.delay(1, retry_after=60.0) == 20.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_retries": -1}, "max-retries"), ({"base": 0.0}, "base"),
     ({"base": 2.0, "cap": 1.0}, "cap"), ({"max_retry_after": -1.0}, "max_retry_after")],
)
def test_bad_policies_are_config_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
