"""The webhook retry schedule: jittered exponential backoff, capped, for about a day."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amnex.webhooks.retry import (
    BASE_DELAY_S,
    MAX_DELAY_S,
    MAX_RETRY_AGE_S,
    MIN_DELAY_S,
    delay_ceiling_s,
    give_up,
    next_attempt_at,
    next_attempt_delay,
    should_disable_endpoint,
)

FIRST = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_the_ceiling_doubles_from_five_seconds_up_to_an_hour() -> None:
    ceilings = [delay_ceiling_s(attempt) for attempt in range(1, 14)]

    assert ceilings[:5] == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert ceilings[-1] == MAX_DELAY_S
    assert delay_ceiling_s(10_000) == MAX_DELAY_S


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        delay_ceiling_s(0)


@given(attempt=st.integers(min_value=1, max_value=200), seed=st.integers())
def test_a_delay_lies_between_the_floor_and_its_ceiling(attempt: int, seed: int) -> None:
    delay = next_attempt_delay(attempt, random.Random(seed))

    assert MIN_DELAY_S <= delay <= max(MIN_DELAY_S, delay_ceiling_s(attempt))


def test_a_seeded_generator_gives_a_repeatable_schedule() -> None:
    first = [next_attempt_delay(n, random.Random(42)) for n in range(1, 8)]
    again = [next_attempt_delay(n, random.Random(42)) for n in range(1, 8)]

    assert first == again


def test_full_jitter_spreads_endpoints_that_failed_together() -> None:
    rng = random.Random(7)
    delays = [next_attempt_delay(8, rng) for _ in range(200)]

    assert len({round(delay, 6) for delay in delays}) > 190
    # Spread over the whole range up to the ceiling, not bunched at one end.
    assert min(delays) < delay_ceiling_s(8) * 0.1
    assert max(delays) > delay_ceiling_s(8) * 0.9


def test_a_longer_retry_after_wins() -> None:
    rng = random.Random(1)

    assert next_attempt_delay(1, rng, retry_after_s=120.0) == 120.0


def test_a_shorter_retry_after_does_not_pull_the_retry_in() -> None:
    computed = next_attempt_delay(6, random.Random(3))

    assert next_attempt_delay(6, random.Random(3), retry_after_s=0.0) == computed


def test_retry_after_never_goes_beyond_the_cap() -> None:
    assert next_attempt_delay(1, random.Random(1), retry_after_s=86_400.0) == MAX_DELAY_S


def test_give_up_after_a_day_since_the_first_attempt() -> None:
    assert not give_up(FIRST, FIRST)
    assert not give_up(FIRST, FIRST + timedelta(hours=23, minutes=59))
    assert give_up(FIRST, FIRST + timedelta(seconds=MAX_RETRY_AGE_S))


def test_the_next_attempt_is_scheduled_after_the_delay() -> None:
    now = FIRST + timedelta(minutes=1)
    expected = now + timedelta(seconds=next_attempt_delay(2, random.Random(5)))

    assert next_attempt_at(attempt=2, first_attempt_at=FIRST, now=now, rng=random.Random(5)) == (
        expected
    )


def test_the_last_attempt_lands_on_the_deadline_and_then_the_event_is_given_up() -> None:
    deadline = FIRST + timedelta(seconds=MAX_RETRY_AGE_S)
    near_end = deadline - timedelta(seconds=10)

    last = next_attempt_at(
        attempt=40, first_attempt_at=FIRST, now=near_end, rng=random.Random(1), retry_after_s=600
    )
    assert last == deadline
    assert (
        next_attempt_at(attempt=41, first_attempt_at=FIRST, now=deadline, rng=random.Random(1))
        is None
    )


def test_a_dead_endpoint_is_tried_for_a_day_in_a_bounded_number_of_attempts() -> None:
    """Given an endpoint that always fails, when the schedule runs, then it stops after 24 h."""
    rng = random.Random(2026)
    now, attempt = FIRST, 1
    while planned := next_attempt_at(attempt=attempt, first_attempt_at=FIRST, now=now, rng=rng):
        assert planned > now
        now, attempt = planned, attempt + 1

    assert now == FIRST + timedelta(seconds=MAX_RETRY_AGE_S)
    # Exponential growth to hourly waits: dozens of attempts, not thousands.
    assert 20 <= attempt <= 80
    assert BASE_DELAY_S == 5.0


def test_an_endpoint_failing_for_a_whole_day_is_disabled() -> None:
    assert not should_disable_endpoint(None, FIRST)
    assert not should_disable_endpoint(FIRST, FIRST + timedelta(hours=23))
    assert should_disable_endpoint(FIRST, FIRST + timedelta(hours=24))
