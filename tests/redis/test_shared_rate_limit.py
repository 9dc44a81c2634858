"""With Redis configured, every API process draws from one rate-limit budget per key."""

from __future__ import annotations

import secrets

import pytest

from amnex.api.ratelimit import RateLimiter

pytestmark = pytest.mark.redis


async def test_two_api_processes_share_one_budget(redis_url: str | None) -> None:
    if redis_url is None:
        pytest.skip("needs Redis: set AMNEX_TEST_REDIS_URL (the PostgreSQL pass of .ci/run does)")
    # Given two API processes' limiters on the same Redis
    first, second = RateLimiter(redis_url), RateLimiter(redis_url)
    key = "key_" + secrets.token_hex(8)
    try:
        # When one key makes 6 requests, alternating between them, against a limit of 5/s
        decisions = [await (first if i % 2 else second).hit(key, 5) for i in range(6)]
    finally:
        await first.close()
        await second.close()
    # Then the sixth is refused, whichever process answers
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[4].remaining == 0


async def test_an_unreachable_redis_lets_requests_through() -> None:
    # Redis holds counters, not records: losing it must not stop sending.
    limiter = RateLimiter("redis://127.0.0.1:1/0")
    try:
        decision = await limiter.hit("key_x", 5)
    finally:
        await limiter.close()
    assert decision.allowed
