"""`Idempotency-Key` on `POST /v1/messages`: a retried request never sends twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from api_checks import EMAIL, assert_problem, count_messages, stored_counts
from sqlalchemy import update

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import IdempotencyRecord
from support import AccountHandle, make_account, serve_api


def with_key(account: AccountHandle, key: str) -> dict[str, str]:
    return {**account.headers, "Idempotency-Key": key}


async def test_same_idempotency_key_and_body_replays_the_first_response(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        first = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-A-1"), json=EMAIL
        )
        again = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-A-1"), json=EMAIL
        )
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert "ratelimit-limit" in again.headers
    assert await stored_counts(db) == (1, 1, 1)


async def test_replay_shows_the_message_as_it_is_now(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        first = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-A-2"), json=EMAIL
        )
        message_id = first.json()["id"]
        await api.client.delete(f"/v1/messages/{message_id}", headers=account.headers)
        again = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-A-2"), json=EMAIL
        )
    assert again.json()["id"] == message_id
    assert again.json()["status"] == "canceled"
    assert await count_messages(db) == 1


async def test_same_idempotency_key_with_a_different_body_is_a_conflict(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        first = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-A-3"), json=EMAIL
        )
        other = await api.client.post(
            "/v1/messages",
            headers=with_key(account, "order-A-3"),
            json={**EMAIL, "to": "sam@example.com"},
        )
    assert first.status_code == 201
    assert "Idempotency-Key" in assert_problem(other, 409, "idempotency_key_reused")["detail"]
    assert await stored_counts(db) == (1, 1, 1)


async def test_idempotency_keys_are_scoped_to_the_account(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other Shop")
    async with serve_api(settings, db) as api:
        mine = await api.client.post(
            "/v1/messages", headers=with_key(account, "shared-key"), json=EMAIL
        )
        theirs = await api.client.post(
            "/v1/messages", headers=with_key(other, "shared-key"), json=EMAIL
        )
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs.json()["account_id"] == other.account_id
    assert await count_messages(db, account.account_id) == 1
    assert await count_messages(db, other.account_id) == 1


async def test_concurrent_requests_with_one_idempotency_key_store_one_message(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        responses = await asyncio.gather(
            *(
                api.client.post("/v1/messages", headers=with_key(account, "burst"), json=EMAIL)
                for _ in range(10)
            )
        )
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    # Exactly one of them created the message; the others replayed it.
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed.count("true") == 9
    assert await stored_counts(db) == (1, 1, 1)


async def test_request_refused_with_an_idempotency_key_does_not_use_the_key_up(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        refused = await api.client.post(
            "/v1/messages",
            headers=with_key(account, "fix-and-retry"),
            json={**EMAIL, "to": "not-an-address"},
        )
        fixed = await api.client.post(
            "/v1/messages", headers=with_key(account, "fix-and-retry"), json=EMAIL
        )
    assert_problem(refused, 422, "invalid_address")
    assert fixed.status_code == 201, fixed.text
    assert "idempotent-replayed" not in fixed.headers
    assert await stored_counts(db) == (1, 1, 1)


@pytest.mark.parametrize(
    "key", [pytest.param("k" * 256, id="too-long"), pytest.param("", id="empty")]
)
async def test_malformed_idempotency_key_is_a_bad_request(
    settings: Settings, db: Database, account: AccountHandle, key: str
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post("/v1/messages", headers=with_key(account, key), json=EMAIL)
    assert "Idempotency-Key" in assert_problem(response, 400, "invalid_request")["detail"]
    assert await stored_counts(db) == (0, 0, 0)


async def test_a_retry_refused_now_still_gets_the_answer_the_send_got(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given a send accepted with a key, then the recipient opting out
    async with serve_api(settings, db) as api:
        first = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-B-1"), json=EMAIL
        )
        opted_out = await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={"channel": "email", "address": EMAIL["to"]},
        )
        assert opted_out.status_code == 201, opted_out.text

        # When the same request is retried with its key, and sent again without one
        again = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-B-1"), json=EMAIL
        )
        fresh = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)

    # Then the retry gets the original answer, and only a new send is refused
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert_problem(fresh, 422, "recipient_opted_out")
    assert await count_messages(db) == 1


async def test_an_expired_key_is_free_for_a_new_message(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        first = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-C-1"), json=EMAIL
        )
        # Given the key's record past its expiry, not purged yet
        async with db.unit_of_work() as session:
            await session.execute(
                update(IdempotencyRecord).values(expires_at=utc_now() - timedelta(seconds=1))
            )
        again = await api.client.post(
            "/v1/messages", headers=with_key(account, "order-C-1"), json=EMAIL
        )
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert await count_messages(db) == 2
