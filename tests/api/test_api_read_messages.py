"""Reading, listing, following and canceling messages — and seeing only one's own."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from api_checks import EMAIL, assert_problem, error_fields

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from support import AccountHandle, make_account, serve_api


async def send(client: httpx.AsyncClient, account: AccountHandle, **changes: Any) -> dict[str, Any]:
    response = await client.post("/v1/messages", headers=account.headers, json={**EMAIL, **changes})
    assert response.status_code == 201, response.text
    message: dict[str, Any] = response.json()
    return message


async def list_ids(
    client: httpx.AsyncClient, account: AccountHandle, **params: str | int
) -> list[str]:
    response = await client.get("/v1/messages", headers=account.headers, params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    return [m["id"] for m in page["data"]]


def in_hours(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


async def test_list_pages_through_every_message_newest_first(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        created = [(await send(api.client, account))["id"] for _ in range(7)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            response = await api.client.get("/v1/messages", headers=account.headers, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert set(page) == {"data", "next_cursor"}
            assert len(page["data"]) <= 3
            seen.extend(m["id"] for m in page["data"])
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert pages == 3
    assert seen == list(reversed(created))  # newest first, no duplicates, no gaps


async def test_list_filters_by_status_channel_recipient_and_creation_time(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        # Given four messages in different states, to two recipients
        first = await send(api.client, account, to="alex@example.com")
        second = await send(api.client, account, to="sam@example.com")
        third = await send(api.client, account, to="alex@example.com", send_at=in_hours(2))
        fourth = await send(api.client, account, to="sam@example.com")
        canceled = await api.client.delete(f"/v1/messages/{fourth['id']}", headers=account.headers)
        assert canceled.status_code == 200
        one, two, three, four = (m["id"] for m in (first, second, third, fourth))
        c = api.client

        # Then each filter narrows the list, newest first
        assert await list_ids(c, account) == [four, three, two, one]
        assert await list_ids(c, account, status="queued") == [two, one]
        assert await list_ids(c, account, status="scheduled") == [three]
        assert await list_ids(c, account, status="canceled") == [four]
        assert await list_ids(c, account, status="delivered") == []
        assert await list_ids(c, account, channel="email") == [four, three, two, one]
        assert await list_ids(c, account, channel="sms") == []
        assert await list_ids(c, account, to="alex@example.com") == [three, one]
        assert await list_ids(c, account, to="alex@Example.COM") == [three, one]
        assert await list_ids(c, account, to="nobody") == []
        assert await list_ids(c, account, to="sam@example.com", status="queued") == [two]
        assert await list_ids(c, account, created_after=second["created_at"]) == [
            four,
            three,
            two,
        ]
        assert await list_ids(c, account, created_before=third["created_at"]) == [two, one]
        assert await list_ids(
            c, account, created_after=second["created_at"], created_before=fourth["created_at"]
        ) == [three, two]


@pytest.mark.parametrize(
    ("params", "status", "code", "field"),
    [
        pytest.param({"cursor": "not a cursor!"}, 400, "invalid_request", None, id="cursor-junk"),
        pytest.param(
            {"cursor": base64.urlsafe_b64encode(b"acc_123").decode()},
            400,
            "invalid_request",
            None,
            id="cursor-not-ours",
        ),
        pytest.param(
            {"created_after": "2024-01-01T00:00:00"},
            400,
            "invalid_request",
            None,
            id="created-after-without-offset",
        ),
        pytest.param(
            {"created_before": "2024-01-01T00:00:00"},
            400,
            "invalid_request",
            None,
            id="created-before-without-offset",
        ),
        pytest.param(
            {"created_after": "yesterday"},
            422,
            "validation_failed",
            "created_after",
            id="created-after-not-a-time",
        ),
        pytest.param({"status": "lost"}, 422, "validation_failed", "status", id="unknown-status"),
        pytest.param({"channel": "fax"}, 422, "validation_failed", "channel", id="unknown-channel"),
        pytest.param({"limit": 0}, 422, "validation_failed", "limit", id="limit-zero"),
        pytest.param({"limit": 101}, 422, "validation_failed", "limit", id="limit-too-big"),
    ],
)
async def test_bad_list_parameters_are_precise_errors(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    params: dict[str, str | int],
    status: int,
    code: str,
    field: str | None,
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.get("/v1/messages", headers=account.headers, params=params)
    problem = assert_problem(response, status, code)
    name = next(iter(params))
    if field is None:
        assert name in problem["detail"]
    else:
        assert field in error_fields(problem)


async def test_events_record_each_transition_in_order(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        message = await send(api.client, account)
        path = f"/v1/messages/{message['id']}/events"
        before = (await api.client.get(path, headers=account.headers)).json()["data"]
        await api.client.delete(f"/v1/messages/{message['id']}", headers=account.headers)
        after = (await api.client.get(path, headers=account.headers)).json()["data"]
    assert [(e["seq"], e["status"]) for e in before] == [(1, "queued")]
    assert [(e["seq"], e["status"]) for e in after] == [(1, "queued"), (2, "canceled")]
    assert after[0]["at"] == message["created_at"]
    assert after[0]["at"] <= after[1]["at"]
    assert after[1]["detail"] == {"source": "api"}
    assert after[1]["error_code"] is None


@pytest.mark.parametrize(
    "changes",
    [pytest.param({}, id="queued"), pytest.param({"send_at": in_hours(1)}, id="scheduled")],
)
async def test_delete_cancels_a_message_not_yet_sent(
    settings: Settings, db: Database, account: AccountHandle, changes: dict[str, Any]
) -> None:
    async with serve_api(settings, db) as api:
        message = await send(api.client, account, **changes)
        canceled = await api.client.delete(f"/v1/messages/{message['id']}", headers=account.headers)
        fetched = await api.client.get(f"/v1/messages/{message['id']}", headers=account.headers)
        events = await api.client.get(
            f"/v1/messages/{message['id']}/events", headers=account.headers
        )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["id"] == message["id"]
    assert fetched.json()["status"] == "canceled"
    assert [e["status"] for e in events.json()["data"]] == [message["status"], "canceled"]


async def test_canceling_a_canceled_message_is_an_invalid_transition(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        message = await send(api.client, account)
        path = f"/v1/messages/{message['id']}"
        first = await api.client.delete(path, headers=account.headers)
        second = await api.client.delete(path, headers=account.headers)
        events = await api.client.get(f"{path}/events", headers=account.headers)
    assert first.status_code == 200
    problem = assert_problem(second, 409, "invalid_status_transition")
    assert "canceled" in problem["detail"]
    assert len(events.json()["data"]) == 2  # the refused cancel left no event


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        pytest.param("GET", "", id="read"),
        pytest.param("GET", "/events", id="events"),
        pytest.param("DELETE", "", id="cancel"),
    ],
)
async def test_another_accounts_message_is_not_found(
    settings: Settings, db: Database, account: AccountHandle, method: str, suffix: str
) -> None:
    other = await make_account(db, name="Other Shop")
    async with serve_api(settings, db) as api:
        message = await send(api.client, account)
        response = await api.client.request(
            method, f"/v1/messages/{message['id']}{suffix}", headers=other.headers
        )
        their_list = await api.client.get("/v1/messages", headers=other.headers)
        still = await api.client.get(f"/v1/messages/{message['id']}", headers=account.headers)
    assert message["id"] in assert_problem(response, 404, "not_found")["detail"]
    assert their_list.json() == {"data": [], "next_cursor": None}
    assert still.json()["status"] == "queued"


@pytest.mark.parametrize(
    "message_id",
    [
        pytest.param("nope", id="word"),
        pytest.param("msg_123", id="short"),
        pytest.param("msg_" + "u" * 26, id="not-crockford"),
        pytest.param(new_id("acc"), id="other-kind-of-id"),
        pytest.param(new_id("msg"), id="well-formed-but-unknown"),
    ],
)
async def test_unknown_or_malformed_message_id_is_not_found(
    settings: Settings, db: Database, account: AccountHandle, message_id: str
) -> None:
    async with serve_api(settings, db) as api:
        responses = [
            await api.client.get(f"/v1/messages/{message_id}", headers=account.headers),
            await api.client.get(f"/v1/messages/{message_id}/events", headers=account.headers),
            await api.client.delete(f"/v1/messages/{message_id}", headers=account.headers),
        ]
    for response in responses:
        assert_problem(response, 404, "not_found")


def test_event_details_do_not_show_which_worker_held_the_message() -> None:
    from amnex.api.routes.messages import client_event_detail

    detail = {"attempt": 2, "worker": "host-7:1234:ABCDEF", "reclaimed_from": "host-3:99:XYZ"}
    assert client_event_detail(detail) == {"attempt": 2}
    assert client_event_detail(None) is None
