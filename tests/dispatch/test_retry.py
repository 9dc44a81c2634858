"""Backoff with jitter, bounded by the validity period and the maximum retry age."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amnex.dispatch.retry import RetryPolicy, decide_retry

POLICY = RetryPolicy(base_s=2.0, max_s=600.0, max_age_s=3600.0)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@given(attempt=st.integers(min_value=1, max_value=60), seed=st.integers())
def test_delay_grows_exponentially_within_half_to_full_ceiling(attempt: int, seed: int) -> None:
    ceiling = min(POLICY.max_s, POLICY.base_s * 2.0 ** (attempt - 1))
    delay = POLICY.delay_s(attempt, rng=random.Random(seed))
    assert ceiling / 2 <= delay <= ceiling


def test_jitter_spreads_retries_of_messages_that_failed_together() -> None:
    rng = random.Random(7)
    delays = {round(POLICY.delay_s(5, rng=rng), 6) for _ in range(50)}
    assert len(delays) > 40


def test_a_retry_is_scheduled_while_young_and_valid() -> None:
    decision = decide_retry(
        POLICY, attempt=1, now=NOW, created_at=NOW, expires_at=None, error_code="temporary_failure"
    )
    assert decision.retry_at is not None
    assert NOW + timedelta(seconds=1) <= decision.retry_at <= NOW + timedelta(seconds=2)


def test_retry_after_from_the_carrier_is_honoured() -> None:
    decision = decide_retry(
        POLICY,
        attempt=1,
        now=NOW,
        created_at=NOW,
        expires_at=None,
        error_code="throttled",
        retry_after_s=30,
    )
    assert decision.retry_at == NOW + timedelta(seconds=30)


def test_a_retry_past_the_validity_period_fails_as_expired() -> None:
    decision = decide_retry(
        POLICY,
        attempt=3,
        now=NOW,
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=1),
        error_code="temporary_failure",
    )
    assert decision.retry_at is None
    assert decision.give_up_code == "expired"


@pytest.mark.parametrize("age_s", [3599.0, 4000.0])
def test_past_the_maximum_age_the_error_itself_is_final(age_s: float) -> None:
    decision = decide_retry(
        POLICY,
        attempt=10,
        now=NOW,
        created_at=NOW - timedelta(seconds=age_s),
        expires_at=None,
        error_code="connection_error",
    )
    assert decision.retry_at is None
    assert decision.give_up_code == "connection_error"
