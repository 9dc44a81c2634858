"""Webhooks: the one place that decides when a failed delivery is tried again, and when not.

Design note. Delays grow exponentially from `BASE_DELAY_S` and are capped at `MAX_DELAY_S`;
each is drawn with "full jitter" (uniformly between `MIN_DELAY_S` and the ceiling) so the
events of an endpoint that failed together do not all come back at once when it recovers. A
receiver's `Retry-After` wins when it asks for longer, but never beyond the cap, so one header
cannot park an event for days. An event is tried for `MAX_RETRY_AGE_S` after its first attempt;
the last attempt is pulled in to land exactly at that deadline rather than being skipped. An
endpoint whose deliveries have all failed for `ENDPOINT_DISABLE_AFTER_S` is disabled.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

# First retry comes after up to 5 s; each further failure doubles the ceiling.
BASE_DELAY_S = 5.0
# No single wait is longer than an hour, whatever the attempt number or Retry-After.
MAX_DELAY_S = 3600.0
# Never retry sooner than this, even on a low jitter draw.
MIN_DELAY_S = 1.0
# An event is given up 24 hours after its first attempt.
MAX_RETRY_AGE_S = 24 * 3600.0
# An endpoint that has only failed for this long is disabled.
ENDPOINT_DISABLE_AFTER_S = 24 * 3600.0


def delay_ceiling_s(attempt: int) -> float:
    """The largest delay after `attempt` (>= 1) failed attempts."""
    if attempt < 1:
        raise ValueError("attempt counts failed attempts, from 1")
    # min() first on the exponent keeps 2.0 ** attempt from overflowing for huge counts.
    return min(MAX_DELAY_S, BASE_DELAY_S * 2.0 ** min(attempt - 1, 64))


def next_attempt_delay(
    attempt: int, rng: random.Random, *, retry_after_s: float | None = None
) -> float:
    """Seconds to wait after `attempt` (>= 1) failed attempts, honouring `Retry-After`."""
    delay = max(MIN_DELAY_S, rng.uniform(0.0, delay_ceiling_s(attempt)))
    if retry_after_s is not None and retry_after_s > delay:
        delay = retry_after_s
    return min(delay, MAX_DELAY_S)


def give_up(first_attempt_at: datetime, now: datetime) -> bool:
    """True once an event has been tried for the whole retry window."""
    return now - first_attempt_at >= timedelta(seconds=MAX_RETRY_AGE_S)


def next_attempt_at(
    *,
    attempt: int,
    first_attempt_at: datetime,
    now: datetime,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> datetime | None:
    """When to try again after `attempt` failures, or None to give up on the event."""
    if give_up(first_attempt_at, now):
        return None
    deadline = first_attempt_at + timedelta(seconds=MAX_RETRY_AGE_S)
    planned = now + timedelta(seconds=next_attempt_delay(attempt, rng, retry_after_s=retry_after_s))
    return min(planned, deadline)


def should_disable_endpoint(failing_since: datetime | None, now: datetime) -> bool:
    """True when an endpoint's deliveries have failed without a success for a whole day."""
    return failing_since is not None and now - failing_since >= timedelta(
        seconds=ENDPOINT_DISABLE_AFTER_S
    )
