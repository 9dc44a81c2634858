"""Per-key rate limits: `RateLimit-*` headers on every answer, 429 with `Retry-After` beyond.

With `AMNEX_TEST_REDIS_URL` set the runtime counts in Redis; the counter is keyed by the API
key's id, which is random per test, so reruns never share a window.
"""

from __future__ import annotations

import redis.asyncio
from api_checks import EMAIL, assert_problem, count_messages

from amnex.accounts import service as accounts
from amnex.config import Settings
from amnex.db.engine import Database
from support import make_account, serve_api


async def counters_in_redis(redis_url: str, key_id: str) -> list[bytes]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(match=f"*{key_id}*")]
    finally:
        await client.aclose()


async def test_requests_beyond_the_accounts_rate_are_refused_with_retry_after(
    settings: Settings, db: Database
) -> None:
    account = await make_account(db, rate_limit_per_s=3)
    async with db.read_session() as session:
        (key,) = await accounts.list_api_keys(session, account.account_id)
    async with serve_api(settings, db) as api:
        # Given three requests in the same second, each told how many remain
        accepted = [
            await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
            for _ in range(3)
        ]
        # When a fourth arrives within that second
        refused = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
        listed = await api.client.get("/v1/messages", headers=account.headers)
        if settings.redis_url:
            # The window is counted in Redis, shared by every API node.
            assert await counters_in_redis(settings.redis_url, key.id)

    assert [r.status_code for r in accepted] == [201, 201, 201]
    assert [r.headers["ratelimit-remaining"] for r in accepted] == ["2", "1", "0"]
    for response in accepted:
        assert response.headers["ratelimit-limit"] == "3"
        assert response.headers["ratelimit-reset"] == "1"  # a one-second window

    # Then it is refused, told when to come back, and nothing is stored for it
    problem = assert_problem(refused, 429, "rate_limited")
    assert "3" in problem["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) >= 1
    # Reads count against the same key.
    assert_problem(listed, 429, "rate_limited")
    assert await count_messages(db) == 3


async def test_rate_limit_is_per_key(settings: Settings, db: Database) -> None:
    busy = await make_account(db, rate_limit_per_s=1, name="Busy Shop")
    quiet = await make_account(db, rate_limit_per_s=1, name="Quiet Shop")
    async with serve_api(settings, db) as api:
        first = await api.client.post("/v1/messages", headers=busy.headers, json=EMAIL)
        limited = await api.client.post("/v1/messages", headers=busy.headers, json=EMAIL)
        other = await api.client.post("/v1/messages", headers=quiet.headers, json=EMAIL)
    assert first.status_code == 201
    assert_problem(limited, 429, "rate_limited")
    assert other.status_code == 201, other.text
    assert other.headers["ratelimit-remaining"] == "0"


async def test_successful_answers_carry_the_default_rate_headers(
    settings: Settings, db: Database
) -> None:
    account = await make_account(db)
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
        read = await api.client.get(f"/v1/messages/{sent.json()['id']}", headers=account.headers)
    for response in (sent, read):
        assert response.headers["ratelimit-limit"] == str(settings.default_rate_limit_per_s)
        assert int(response.headers["ratelimit-remaining"]) < settings.default_rate_limit_per_s
        assert int(response.headers["ratelimit-reset"]) >= 1
