"""Sending quotas (the gate's rule 7): an account's daily cap and its per-prefix velocity,
answered `429` with `Retry-After`, counted in the rejection metric, and never used up by a
message that was not stored. Counted in memory, and in Redis when AMNEX_TEST_REDIS_URL is
set (the same counters every API node shares)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio
from api_checks import assert_problem, count_messages

from amnex.api.routes import messages as message_routes
from amnex.config import Settings
from amnex.db.engine import Database
from support import AccountHandle, add_smpp_route, make_account, serve_api, with_master_key

SAN_FRANCISCO = [f"+1415555{i:04d}" for i in range(100, 110)]
NEW_YORK = "+12125550100"
OPTED_OUT = "+14155550199"


@pytest.fixture(params=["memory", "redis"])
async def quota_settings(
    request: pytest.FixtureRequest, settings: Settings, db: Database, redis_url: str | None
) -> Settings:
    """Settings with an SMS route (nothing is dispatched: no SMSC is needed), counting in
    memory or in Redis."""
    if request.param == "redis" and redis_url is None:
        pytest.skip("needs Redis: set AMNEX_TEST_REDIS_URL (the PostgreSQL pass of .ci/run does)")
    keyed = with_master_key(settings, redis_url=redis_url if request.param == "redis" else None)
    await add_smpp_route(db, keyed, host="127.0.0.1", port=9)
    return keyed


async def send(
    client: httpx.AsyncClient, account: AccountHandle, to: str, **body: Any
) -> httpx.Response:
    return await client.post(
        "/v1/messages",
        headers=account.headers,
        json={"channel": "sms", "to": to, "body": "Your code is 123456", **body},
    )


async def rejected_total(client: httpx.AsyncClient, code: str) -> float:
    """The value of amnex_messages_rejected_total{code=...} (0 before the first)."""
    metrics = (await client.get("/metrics")).text
    match = re.search(
        rf'^amnex_messages_rejected_total\{{code="{re.escape(code)}"\}} (\S+)$', metrics, re.M
    )
    return float(match.group(1)) if match else 0.0


async def counters_in_redis(redis_url: str, account_id: str) -> list[bytes]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(match=f"*{account_id}*")]
    finally:
        await client.aclose()


def seconds_to_utc_midnight(now: datetime) -> float:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


async def test_the_daily_cap_refuses_the_message_beyond_it_until_utc_midnight(
    quota_settings: Settings, db: Database
) -> None:
    account = await make_account(db, compliance={"daily_cap": 3})
    async with serve_api(quota_settings, db) as api:
        before = await rejected_total(api.client, "daily_cap_reached")
        # Given three messages sent today
        accepted = [await send(api.client, account, to) for to in SAN_FRANCISCO[:3]]
        # When a fourth is sent, to another number and prefix
        asked_at = datetime.now(UTC)
        refused = await send(api.client, account, NEW_YORK)
        after = await rejected_total(api.client, "daily_cap_reached")
        if quota_settings.redis_url:
            assert await counters_in_redis(quota_settings.redis_url, account.account_id)

    assert [r.status_code for r in accepted] == [201, 201, 201], [r.text for r in accepted]
    # Then it is refused until the day ends in UTC, counted, and not stored
    problem = assert_problem(refused, 429, "daily_cap_reached")
    assert "3" in problem["detail"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= seconds_to_utc_midnight(asked_at) + 1
    assert after - before == 1
    assert await count_messages(db, account.account_id) == 3


async def test_the_daily_cap_resets_when_the_utc_day_ends(
    quota_settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The send path's clock is pinned: 30 s before midnight, then just after it.
    now = [datetime.now(UTC).replace(hour=23, minute=59, second=30, microsecond=0)]
    monkeypatch.setattr(message_routes, "utc_now", lambda: now[0])
    account = await make_account(db, compliance={"daily_cap": 1})
    async with serve_api(quota_settings, db) as api:
        first = await send(api.client, account, SAN_FRANCISCO[0])
        refused = await send(api.client, account, SAN_FRANCISCO[1])
        now[0] += timedelta(seconds=31)
        next_day = await send(api.client, account, SAN_FRANCISCO[2])
    assert first.status_code == 201, first.text
    assert_problem(refused, 429, "daily_cap_reached")
    assert refused.headers["retry-after"] == "30"
    assert next_day.status_code == 201, next_day.text


async def test_a_message_the_gate_rejects_does_not_use_up_the_cap(
    quota_settings: Settings, db: Database
) -> None:
    account = await make_account(db, compliance={"daily_cap": 3})
    async with serve_api(quota_settings, db) as api:
        # Given a number that opted out of the account
        opted = await api.client.post(
            "/v1/opt-outs", headers=account.headers, json={"channel": "sms", "address": OPTED_OUT}
        )
        assert opted.status_code in (200, 201), opted.text
        # When a message to it is refused by the gate, and a marketing one without consent too
        refused = await send(api.client, account, OPTED_OUT)
        no_consent = await send(
            api.client,
            account,
            SAN_FRANCISCO[0],
            category="marketing",
            body="Shop Example: 20% off. Reply STOP to opt out.",
        )
        # Then the whole cap is still there
        accepted = [await send(api.client, account, to) for to in SAN_FRANCISCO[1:4]]
        beyond = await send(api.client, account, SAN_FRANCISCO[4])

    assert_problem(refused, 422, "recipient_opted_out")
    assert_problem(no_consent, 422, "consent_required")
    assert [r.status_code for r in accepted] == [201, 201, 201], [r.text for r in accepted]
    assert_problem(beyond, 429, "daily_cap_reached")
    assert await count_messages(db, account.account_id) == 3


async def test_a_message_refused_before_the_gate_does_not_use_up_the_cap(
    quota_settings: Settings, db: Database
) -> None:
    account = await make_account(db, compliance={"daily_cap": 1})
    async with serve_api(quota_settings, db) as api:
        invalid = await send(api.client, account, "+1555")
        abroad = await send(api.client, account, "+447400123456")
        accepted = await send(api.client, account, SAN_FRANCISCO[0])
    assert_problem(invalid, 422, "invalid_address")
    assert_problem(abroad, 422, "destination_country_not_allowed")
    assert accepted.status_code == 201, accepted.text


async def test_prefix_velocity_limits_one_prefix_not_the_others(
    quota_settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The send path's clock is pinned mid-minute, so the requests share one minute's window.
    pinned = datetime.now(UTC).replace(second=20, microsecond=0)
    monkeypatch.setattr(message_routes, "utc_now", lambda: pinned)
    account = await make_account(db, compliance={"prefix_velocity_per_minute": 2})
    async with serve_api(quota_settings, db) as api:
        before = await rejected_total(api.client, "velocity_limited")
        # Given two SMS to +1415 numbers in one minute
        accepted = [await send(api.client, account, to) for to in SAN_FRANCISCO[:2]]
        # When a third goes to another +1415 number, and one to +1212
        limited = await send(api.client, account, SAN_FRANCISCO[2])
        other_prefix = await send(api.client, account, NEW_YORK)
        after = await rejected_total(api.client, "velocity_limited")

    assert [r.status_code for r in accepted] == [201, 201], [r.text for r in accepted]
    # Then the third is refused until the minute ends; the other prefix is not limited
    problem = assert_problem(limited, 429, "velocity_limited")
    assert "+1415" in problem["detail"]
    assert limited.headers["retry-after"] == "40"
    assert other_prefix.status_code == 201, other_prefix.text
    assert after - before == 1
    assert await count_messages(db, account.account_id) == 3


async def test_a_velocity_refusal_gives_back_the_daily_cap(
    quota_settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = datetime.now(UTC).replace(second=20, microsecond=0)
    monkeypatch.setattr(message_routes, "utc_now", lambda: pinned)
    account = await make_account(db, compliance={"daily_cap": 3, "prefix_velocity_per_minute": 1})
    async with serve_api(quota_settings, db) as api:
        first = await send(api.client, account, SAN_FRANCISCO[0])
        limited = [await send(api.client, account, to) for to in SAN_FRANCISCO[1:4]]
        others = [await send(api.client, account, to) for to in (NEW_YORK, "+13125550100")]
        beyond = await send(api.client, account, "+16175550100")
    assert first.status_code == 201, first.text
    for response in limited:
        assert_problem(response, 429, "velocity_limited")
    # Three refusals by velocity took nothing from the daily cap of 3.
    assert [r.status_code for r in others] == [201, 201], [r.text for r in others]
    assert_problem(beyond, 429, "daily_cap_reached")


async def test_the_next_minute_opens_the_prefix_again(
    quota_settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [datetime.now(UTC).replace(second=50, microsecond=0)]
    monkeypatch.setattr(message_routes, "utc_now", lambda: now[0])
    account = await make_account(db, compliance={"prefix_velocity_per_minute": 1})
    async with serve_api(quota_settings, db) as api:
        first = await send(api.client, account, SAN_FRANCISCO[0])
        limited = await send(api.client, account, SAN_FRANCISCO[1])
        now[0] += timedelta(seconds=10)
        next_minute = await send(api.client, account, SAN_FRANCISCO[2])
    assert first.status_code == 201, first.text
    assert_problem(limited, 429, "velocity_limited")
    assert limited.headers["retry-after"] == "10"
    assert next_minute.status_code == 201, next_minute.text


async def test_email_is_not_limited_by_prefix_velocity(
    quota_settings: Settings, db: Database
) -> None:
    account = await make_account(db, compliance={"prefix_velocity_per_minute": 1})
    email = {"channel": "email", "to": "alex@example.com", "subject": "Order", "body": "Shipped."}
    async with serve_api(quota_settings, db) as api:
        responses = [
            await api.client.post("/v1/messages", headers=account.headers, json=email)
            for _ in range(3)
        ]
    assert [r.status_code for r in responses] == [201, 201, 201], [r.text for r in responses]
