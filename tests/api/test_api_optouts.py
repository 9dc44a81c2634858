"""`/v1/opt-outs` and `/admin/v1/opt-outs`: the suppression list over HTTP — create (201, then
200), read, delete, pagination, CSV export, scopes, Idempotency-Key, and the operator's
platform-wide list with its audit trail."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import pytest
from api_checks import assert_problem, error_fields
from sqlalchemy import select

from amnex.accounts import service as accounts
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.audit import AuditEntry
from amnex.recipients import service
from amnex.recipients.models import OptOutEvent
from support import AccountHandle, make_account, make_operator, serve_api

NUMBER = "+13125550149"
OPT_OUT: dict[str, Any] = {"channel": "sms", "address": NUMBER}


async def key_with(db: Database, account: AccountHandle, *scopes: str) -> dict[str, str]:
    async with db.unit_of_work() as session:
        _, plaintext = await accounts.create_api_key(
            session, account_id=account.account_id, name="k", scopes=list(scopes), actor="test"
        )
    return {"Authorization": f"Bearer {plaintext}"}


async def events(db: Database) -> list[tuple[str, str]]:
    async with db.read_session() as session:
        rows = await session.scalars(select(OptOutEvent).order_by(OptOutEvent.id))
        return [(e.action, e.source) for e in rows]


async def test_an_account_adds_reads_lists_and_removes_an_opt_out(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        created = await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={
                "channel": "sms",
                "address": "+1 312 555 0149",
                "source": "free_text_reply",
                "evidence": {"text": "please stop texting me", "message_id": "msg_x"},
            },
        )
        again = await api.client.post("/v1/opt-outs", headers=account.headers, json=OPT_OUT)
        path = created.headers["location"]
        fetched = await api.client.get(path, headers=account.headers)
        listed = await api.client.get("/v1/opt-outs", headers=account.headers)
        deleted = await api.client.delete(path, headers=account.headers)
        gone = await api.client.get(path, headers=account.headers)
        deleted_again = await api.client.delete(path, headers=account.headers)

    assert created.status_code == 201, created.text
    body = created.json()
    assert body == {
        "id": body["id"],
        "account_id": account.account_id,
        "channel": "sms",
        "address": NUMBER,
        "source": "free_text_reply",
        "evidence": {"text": "please stop texting me", "message_id": "msg_x"},
        "created_at": body["created_at"],
    }
    assert body["id"].startswith("opt_")
    assert body["created_at"].endswith("Z")
    assert path == f"/v1/opt-outs/{body['id']}"
    assert again.status_code == 200
    assert again.json() == body
    assert fetched.json() == body
    assert listed.json() == {"data": [body], "next_cursor": None}
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(gone, 404, "not_found")
    assert_problem(deleted_again, 404, "not_found")
    assert await events(db) == [("created", "free_text_reply"), ("deleted", "api")]


async def test_an_opt_out_stops_only_its_own_account(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other")
    async with serve_api(settings, db) as api:
        created = (
            await api.client.post("/v1/opt-outs", headers=account.headers, json=OPT_OUT)
        ).json()
        theirs = await api.client.get(f"/v1/opt-outs/{created['id']}", headers=other.headers)
        their_delete = await api.client.delete(
            f"/v1/opt-outs/{created['id']}", headers=other.headers
        )
        their_list = await api.client.get("/v1/opt-outs", headers=other.headers)

    assert_problem(theirs, 404, "not_found")
    assert_problem(their_delete, 404, "not_found")
    assert their_list.json() == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        pytest.param({"channel": "sms", "address": "555"}, 422, "invalid_address", "address"),
        pytest.param(
            {"channel": "email", "address": "not-an-email"}, 422, "invalid_address", "address"
        ),
        pytest.param({"channel": "all", "address": "12"}, 422, "invalid_address", "address"),
        pytest.param({"channel": "fax", "address": NUMBER}, 422, "validation_failed", None),
        pytest.param({"address": NUMBER}, 422, "validation_failed", None, id="no-channel"),
        pytest.param({**OPT_OUT, "source": "operator"}, 422, "validation_failed", None),
        pytest.param({**OPT_OUT, "colour": "blue"}, 422, "validation_failed", None),
        pytest.param(
            {**OPT_OUT, "evidence": {"text": "x" * 2001}},
            422,
            "validation_failed",
            "evidence.text",
            id="long-evidence",
        ),
        pytest.param(
            {**OPT_OUT, "evidence": {"nested": {"a": 1}}},
            422,
            "validation_failed",
            None,
            id="nested-evidence",
        ),
    ],
)
async def test_a_bad_opt_out_is_refused_precisely(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post("/v1/opt-outs", headers=account.headers, json=body)
        listed = await api.client.get("/v1/opt-outs", headers=account.headers)

    problem = assert_problem(response, status, code)
    if field is not None:
        assert problem["field"] == field
    elif code == "validation_failed":
        assert error_fields(problem)
    assert listed.json()["data"] == []


async def test_the_list_pages_and_filters(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        for i in range(5):
            response = await api.client.post(
                "/v1/opt-outs",
                headers=account.headers,
                json={"channel": "sms", "address": f"+1312555{2000 + i:04d}"},
            )
            assert response.status_code == 201
        await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={"channel": "email", "address": "Alex@Example.com", "source": "bounce"},
        )
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"channel": "sms", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (
                await api.client.get("/v1/opt-outs", headers=account.headers, params=params)
            ).json()
            pages.append([o["address"] for o in page["data"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        by_address = await api.client.get(
            "/v1/opt-outs", headers=account.headers, params={"address": "Alex@EXAMPLE.com"}
        )
        by_source = await api.client.get(
            "/v1/opt-outs", headers=account.headers, params={"source": "bounce"}
        )
        future = await api.client.get(
            "/v1/opt-outs",
            headers=account.headers,
            params={"created_after": "2999-01-01T00:00:00Z"},
        )
        naive = await api.client.get(
            "/v1/opt-outs", headers=account.headers, params={"created_after": "2026-01-01T00:00"}
        )
        bad_cursor = await api.client.get(
            "/v1/opt-outs", headers=account.headers, params={"cursor": "bm9wZQ"}
        )

    assert pages == [
        ["+13125552004", "+13125552003"],
        ["+13125552002", "+13125552001"],
        ["+13125552000"],
    ]
    assert [o["address"] for o in by_address.json()["data"]] == ["alex@example.com"]
    assert [o["source"] for o in by_source.json()["data"]] == ["bounce"]
    assert future.json()["data"] == []
    assert assert_problem(naive, 400, "invalid_request")["field"] == "created_after"
    assert assert_problem(bad_cursor, 400, "invalid_request")["field"] == "cursor"


async def test_the_csv_export_streams_every_match(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with db.unit_of_work() as session:
        for i in range(1205):
            await service.add_opt_out(
                session,
                account_id=account.account_id,
                channel="sms",
                address=f"+1312556{i:04d}",
                source="keyword",
                evidence={"text": '=HYPERLINK("http://evil")'} if i == 0 else None,
            )
        await service.add_opt_out(
            session,
            account_id=account.account_id,
            channel="email",
            address="a@example.com",
            source="complaint",
        )
    async with serve_api(settings, db) as api:
        by_param = await api.client.get(
            "/v1/opt-outs", headers=account.headers, params={"format": "csv", "channel": "sms"}
        )
        by_accept = await api.client.get(
            "/v1/opt-outs", headers={**account.headers, "Accept": "text/csv"}
        )
        json_wins = await api.client.get(
            "/v1/opt-outs",
            headers={**account.headers, "Accept": "text/csv"},
            params={"format": "json", "limit": 1},
        )

    assert by_param.status_code == 200
    assert by_param.headers["content-type"].startswith("text/csv")
    assert "attachment" in by_param.headers["content-disposition"]
    assert "ratelimit-limit" in by_param.headers
    rows = list(csv.DictReader(io.StringIO(by_param.text)))
    assert len(rows) == 1205
    assert list(rows[0]) == [
        "id",
        "account_id",
        "channel",
        "address",
        "source",
        "evidence",
        "created_at",
    ]
    assert {r["channel"] for r in rows} == {"sms"}
    assert len({r["id"] for r in rows}) == 1205
    assert rows[-1]["address"] == "+13125560000"  # E.164 is left as it is
    assert rows[-1]["evidence"] == '{"text": "=HYPERLINK(\\"http://evil\\")"}'
    assert rows[0]["evidence"] == ""
    assert len(list(csv.DictReader(io.StringIO(by_accept.text)))) == 1206
    assert json_wins.headers["content-type"] == "application/json"
    assert len(json_wins.json()["data"]) == 1


async def test_reading_needs_read_and_changing_needs_send_or_manage(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    read_only = await key_with(db, account, "read")
    send_only = await key_with(db, account, "send")
    manage_only = await key_with(db, account, "manage")
    async with serve_api(settings, db) as api:
        by_reader = await api.client.post("/v1/opt-outs", headers=read_only, json=OPT_OUT)
        by_sender = await api.client.post("/v1/opt-outs", headers=send_only, json=OPT_OUT)
        by_manager = await api.client.post(
            "/v1/opt-outs", headers=manage_only, json={**OPT_OUT, "channel": "all"}
        )
        path = f"/v1/opt-outs/{by_sender.json()['id']}"
        sender_reads = await api.client.get("/v1/opt-outs", headers=send_only)
        sender_reads_one = await api.client.get(path, headers=send_only)
        reader_reads = await api.client.get(path, headers=read_only)
        reader_deletes = await api.client.delete(path, headers=read_only)
        manager_deletes = await api.client.delete(path, headers=manage_only)
        anonymous = await api.client.get("/v1/opt-outs")

    problem = assert_problem(by_reader, 403, "forbidden")
    assert "`send` or `manage`" in problem["detail"]
    assert by_sender.status_code == 201
    assert by_manager.status_code == 201
    assert_problem(sender_reads, 403, "forbidden")
    assert_problem(sender_reads_one, 403, "forbidden")
    assert reader_reads.status_code == 200
    assert_problem(reader_deletes, 403, "forbidden")
    assert manager_deletes.status_code == 204
    assert_problem(anonymous, 401, "unauthorized")


async def test_an_idempotency_key_replays_the_first_answer(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:

        def post(key: str, body: dict[str, Any]) -> Any:
            return api.client.post(
                "/v1/opt-outs", headers={**account.headers, "Idempotency-Key": key}, json=body
            )

        first = await post("k-1", OPT_OUT)
        replay = await post("k-1", OPT_OUT)
        reused = await post("k-1", {**OPT_OUT, "channel": "all"})
        racing = await asyncio.gather(
            *(post("k-2", {**OPT_OUT, "channel": "mms"}) for _ in range(5))
        )
        await api.client.delete(first.headers["location"], headers=account.headers)
        after_delete = await post("k-1", OPT_OUT)
        bad_key = await post("", OPT_OUT)

    assert first.status_code == 201
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert_problem(reused, 409, "idempotency_key_reused")
    assert {r.status_code for r in racing} == {201}
    assert len({r.json()["id"] for r in racing}) == 1
    assert_problem(after_delete, 404, "not_found")
    assert assert_problem(bad_key, 400, "invalid_request")["field"] == "Idempotency-Key"
    assert await events(db) == [
        ("created", "api"),
        ("created", "api"),
        ("deleted", "api"),
    ]


@pytest.fixture
async def operator(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_operator(db, name='Dana Ops')}"}


async def test_an_operator_manages_platform_opt_outs_that_stop_every_account(
    settings: Settings, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    async with serve_api(settings, db) as api:
        created = await api.client.post(
            "/admin/v1/opt-outs",
            headers=operator,
            json={"channel": "all", "address": "abuse-target@example.com", "source": "complaint"},
        )
        again = await api.client.post(
            "/admin/v1/opt-outs",
            headers=operator,
            json={"channel": "all", "address": "abuse-target@example.com"},
        )
        listed = await api.client.get("/admin/v1/opt-outs", headers=operator)
        account_view = await api.client.get("/v1/opt-outs", headers=account.headers)
        account_delete = await api.client.delete(
            f"/v1/opt-outs/{created.json()['id']}", headers=account.headers
        )
        async with db.read_session() as session:
            stops = await service.is_suppressed(
                session, account.account_id, "email", "abuse-target@example.com"
            )
        removed = await api.client.delete(
            f"/admin/v1/opt-outs/{created.json()['id']}", headers=operator
        )
        removed_again = await api.client.delete(
            f"/admin/v1/opt-outs/{created.json()['id']}", headers=operator
        )
        unknown = await api.client.delete(f"/admin/v1/opt-outs/{new_id('opt')}", headers=operator)
        with_key = await api.client.get("/admin/v1/opt-outs", headers=account.headers)

    assert created.status_code == 201, created.text
    platform = created.json()
    assert platform["account_id"] is None
    assert platform["source"] == "complaint"
    assert again.status_code == 200
    assert again.json()["id"] == platform["id"]
    assert listed.json() == {"data": [platform], "next_cursor": None}
    assert account_view.json()["data"] == []
    assert_problem(account_delete, 404, "not_found")
    assert stops is not None
    assert stops.id == platform["id"]
    assert removed.status_code == 204
    assert_problem(removed_again, 404, "not_found")
    assert_problem(unknown, 404, "not_found")
    assert_problem(with_key, 401, "unauthorized")
    async with db.read_session() as session:
        audit = list(
            await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.actor == "operator:Dana Ops")
                .order_by(AuditEntry.at, AuditEntry.id)
            )
        )
    assert [(a.action, a.target_id) for a in audit] == [
        ("opt_out.create", platform["id"]),
        ("opt_out.create", platform["id"]),
        ("opt_out.list", "*"),
        ("opt_out.delete", platform["id"]),
    ]
    assert all("abuse-target" not in str(a.detail) for a in audit)
    assert await events(db) == [("created", "complaint"), ("deleted", "operator")]
