"""Dispatch: the one place that decides when a temporary failure is tried again.

Exponential backoff with "equal jitter": half the delay is fixed, half random, so retries of
messages that failed together spread out without ever retrying almost at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float
    max_s: float
    max_age_s: float

    def delay_s(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Delay before attempt `attempt + 1`, after `attempt` (>= 1) attempts failed."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** max(0, attempt - 1))
        draw: float = (rng or random).random()
        return ceiling / 2 + draw * ceiling / 2


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry_at: datetime | None
    # When retry_at is None: why the message fails instead ("expired" or the error's own code).
    give_up_code: str | None = None


def decide_retry(
    policy: RetryPolicy,
    *,
    attempt: int,
    now: datetime,
    created_at: datetime,
    expires_at: datetime | None,
    error_code: str,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Retry at a later time, or give up: past the validity period or the maximum age."""
    delay_s = policy.delay_s(attempt, rng=rng)
    if retry_after_s is not None:
        delay_s = max(delay_s, retry_after_s)
    retry_at = now + timedelta(seconds=delay_s)
    if expires_at is not None and retry_at >= expires_at:
        return RetryDecision(None, "expired")
    if retry_at - created_at > timedelta(seconds=policy.max_age_s):
        return RetryDecision(None, error_code)
    return RetryDecision(retry_at)
