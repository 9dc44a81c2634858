"""`/v1/audit-log` and `/admin/v1/audit-log`: reads of personal data are audited with who and
why, an account sees its own chain only, chains verify, operators give a reason, disclosures
to authorities are recorded with their legal basis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_checks import assert_problem
from sqlalchemy import select, text

from amnex.accounts.models import ApiKey, Operator
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from support import AccountHandle, ApiServer, make_account, make_operator, serve_api

OPERATOR = "Dana Ops"
EMAIL = {"channel": "email", "to": "kim@example.com", "subject": "Hi", "body": "Hello Kim"}


@pytest.fixture
async def api(settings: Settings, db: Database) -> AsyncIterator[ApiServer]:
    async with serve_api(settings, db) as server:
        yield server


@pytest.fixture
async def operator(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_operator(db, name=OPERATOR)}"}


def reading(operator: dict[str, str], reason: str = "ticket 4711") -> dict[str, str]:
    return {**operator, "X-Amnex-Reason": reason}


async def key_id(db: Database, account: AccountHandle) -> str:
    async with db.read_session() as session:
        key = await session.scalar(select(ApiKey).where(ApiKey.account_id == account.account_id))
    assert key is not None
    return key.id


async def audit_log(api: ApiServer, account: AccountHandle, **params: Any) -> list[dict[str, Any]]:
    response = await api.client.get("/v1/audit-log", headers=account.headers, params=params)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_reads_of_personal_data_are_audited_with_the_key_and_the_action(
    api: ApiServer, db: Database, account: AccountHandle
) -> None:
    # Given a message, an opt-out and a consent
    sent = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
    opt_out = await api.client.post(
        "/v1/opt-outs", headers=account.headers, json={"channel": "sms", "address": "+13125550111"}
    )
    assert sent.status_code == 201, sent.text
    assert opt_out.status_code == 201, opt_out.text
    message_id, opt_out_id = sent.json()["id"], opt_out.json()["id"]
    # Sending is not a read: the send path writes no audit entry
    assert not [e for e in await audit_log(api, account) if e["action"].startswith("message.")]

    # When the client reads them
    for path, params in (
        (f"/v1/messages/{message_id}", {}),
        ("/v1/messages", {"to": "kim@example.com"}),
        (f"/v1/opt-outs/{opt_out_id}", {}),
        ("/v1/opt-outs", {}),
        ("/v1/opt-outs", {"format": "csv", "address": "+13125550111"}),
        ("/v1/consents", {}),
        (f"/v1/messages/{new_id('msg')}", {}),  # not found: nothing was read
    ):
        response = await api.client.get(path, headers=account.headers, params=params)
        assert response.status_code in (200, 404), response.text

    # Then each read is one entry, newest first, naming the key
    entries = await audit_log(api, account)
    reads = [e for e in entries if e["action"].split(".")[1] in ("read", "list", "export")]
    actor = f"api_key:{await key_id(db, account)}"
    assert [(e["action"], e["target_id"]) for e in reads] == [
        ("consent.list", "*"),
        ("opt_out.export", "*"),
        ("opt_out.list", "*"),
        ("opt_out.read", opt_out_id),
        ("message.list", "*"),
        ("message.read", message_id),
        # the first GET /v1/audit-log above is itself audited; it is the oldest read
        ("audit_log.read", account.account_id),
    ]
    assert {(e["actor"], e["actor_kind"], e["actor_id"]) for e in reads} == {
        (actor, "api_key", actor.partition(":")[2])
    }
    listed = reads[4]
    assert listed["detail"] == {"count": 1, "ids": [message_id]}
    assert listed["personal"] == {"to": "kim@example.com"}
    exported = reads[1]
    assert exported["detail"] == {}
    assert exported["personal"] == {"address": "+13125550111"}
    # The account's own creation and changes are in its chain too
    assert entries[-1]["action"] == "account.create"
    assert entries[-1]["seq"] == 1
    assert "message.create" not in {e["action"] for e in entries}


async def test_an_account_sees_only_its_own_chain(
    api: ApiServer, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other Shop", email_senders=("a@other.example",))
    await api.client.get("/v1/messages", headers=other.headers)

    mine = await audit_log(api, account)
    theirs = await audit_log(api, other)

    assert {e["chain"] for e in mine} == {account.account_id}
    assert {e["account_id"] for e in mine} == {account.account_id}
    assert "message.list" not in {e["action"] for e in mine}
    assert "message.list" in {e["action"] for e in theirs}
    assert {e["chain"] for e in theirs} == {other.account_id}


async def test_the_audit_log_pages_with_a_cursor_and_filters(
    api: ApiServer, db: Database, account: AccountHandle
) -> None:
    for _ in range(5):
        await api.client.get("/v1/messages", headers=account.headers)
    everything = await audit_log(api, account, limit=100)

    seen: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, "action": "message.list"}
        if cursor:
            params["cursor"] = cursor
        page = await api.client.get("/v1/audit-log", headers=account.headers, params=params)
        assert page.status_code == 200, page.text
        seen += [e["seq"] for e in page.json()["data"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    lists = [e["seq"] for e in everything if e["action"] == "message.list"]
    assert seen == lists
    assert len(seen) == 5
    assert seen == sorted(seen, reverse=True)

    actor = f"api_key:{await key_id(db, account)}"
    by_key = await audit_log(api, account, actor=actor, limit=100)
    by_kind = await audit_log(api, account, actor="test", limit=100)
    assert {e["actor"] for e in by_key} == {actor}
    assert {e["action"] for e in by_kind} >= {"account.create", "sender.create"}
    newest = everything[0]["at"]
    assert all(e["at"] >= newest for e in await audit_log(api, account, after=newest))
    assert all(e["at"] < newest for e in await audit_log(api, account, before=newest))

    bad = await api.client.get(
        "/v1/audit-log", headers=account.headers, params={"cursor": "not a cursor"}
    )
    naive = await api.client.get(
        "/v1/audit-log", headers=account.headers, params={"after": "2026-01-01T00:00:00"}
    )
    assert_problem(bad, 400, "invalid_request")
    assert_problem(naive, 400, "invalid_request")


async def test_verify_reports_a_valid_chain_and_a_tampered_one(
    api: ApiServer, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    await api.client.get("/v1/messages", headers=account.headers)
    valid = await api.client.get("/v1/audit-log/verify", headers=account.headers)
    platform = await api.client.get("/admin/v1/audit-log/verify", headers=operator)
    of_account = await api.client.get(
        "/admin/v1/audit-log/verify", headers=operator, params={"account_id": account.account_id}
    )
    entries = await audit_log(api, account, action="message.list")

    assert valid.status_code == 200, valid.text
    report = valid.json()
    assert report["valid"] is True
    assert report["first_broken"] is None
    assert report["entries"] >= 5
    assert report["head_hash"] == entries[0]["hash"]
    assert platform.json()["valid"] is True
    assert of_account.json() == report

    # When someone edits an entry in the database
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET action = 'message.read' WHERE id = :id"),
            {"id": entries[0]["id"]},
        )
    broken = await api.client.get("/v1/audit-log/verify", headers=account.headers)
    assert broken.json()["valid"] is False
    assert broken.json()["first_broken"] == entries[0]["id"]


async def test_operator_reads_of_personal_data_need_a_reason_that_is_audited(
    api: ApiServer, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    path = f"/admin/v1/accounts/{account.account_id}"
    without = await api.client.get(path, headers=operator)
    blank = await api.client.get(path, headers=reading(operator, ""))
    listed_without = await api.client.get("/admin/v1/accounts", headers=operator)
    log_without = await api.client.get("/admin/v1/audit-log", headers=operator)
    unauthenticated = await api.client.get(path, headers={"X-Amnex-Reason": "x"})
    fetched = await api.client.get(path, headers=reading(operator))
    listed = await api.client.get("/admin/v1/accounts", headers=reading(operator, "monthly review"))

    for response in (without, blank, listed_without, log_without):
        assert_problem(response, 400, "reason_required")
    assert_problem(unauthenticated, 401, "unauthorized")
    assert fetched.status_code == 200, fetched.text
    assert listed.status_code == 200, listed.text

    # The account sees that an operator read it, why, and which operator by id, not by name
    async with db.read_session() as session:
        op = await session.scalar(select(Operator).where(Operator.name == OPERATOR))
    assert op is not None
    (read,) = await audit_log(api, account, action="account.read")
    assert (read["actor"], read["reason"]) == (f"operator:{op.id}", "ticket 4711")
    # The operator sees the name, and the platform chain holds the list of every account
    platform = await api.client.get("/admin/v1/audit-log", headers=reading(operator))
    assert platform.status_code == 200, platform.text
    (account_list,) = [e for e in platform.json()["data"] if e["action"] == "account.list"]
    assert (account_list["actor"], account_list["reason"]) == (
        f"operator:{OPERATOR}",
        "monthly review",
    )
    of_account = await api.client.get(
        "/admin/v1/audit-log",
        headers=reading(operator),
        params={"account_id": account.account_id, "action": "account.read"},
    )
    assert [e["actor"] for e in of_account.json()["data"]] == [f"operator:{OPERATOR}"]
    # Reading the audit log is itself audited, with its reason
    audit_reads = await api.client.get(
        "/admin/v1/audit-log", headers=reading(operator), params={"action": "audit_log.read"}
    )
    assert [e["reason"] for e in audit_reads.json()["data"]] == ["ticket 4711"]
    unknown = await api.client.get(
        "/admin/v1/audit-log", headers=reading(operator), params={"account_id": new_id("acc")}
    )
    assert_problem(unknown, 404, "not_found")


async def test_a_disclosure_is_recorded_with_its_legal_basis_in_the_platform_chain(
    api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    body = {
        "account_id": account.account_id,
        "authority": "Cook County Circuit Court",
        "legal_basis": "Subpoena 2026-SC-0142",
        "description": "Delivery metadata of messages to +13125550100, October 2026",
    }
    created = await api.client.post("/admin/v1/disclosures", headers=operator, json=body)
    no_basis = await api.client.post(
        "/admin/v1/disclosures", headers=operator, json={**body, "legal_basis": ""}
    )
    missing = await api.client.post(
        "/admin/v1/disclosures",
        headers=operator,
        json={k: v for k, v in body.items() if k != "legal_basis"},
    )
    unknown = await api.client.post(
        "/admin/v1/disclosures", headers=operator, json={**body, "account_id": new_id("acc")}
    )
    with_key = await api.client.post("/admin/v1/disclosures", headers=account.headers, json=body)

    assert created.status_code == 201, created.text
    entry = created.json()
    assert (entry["action"], entry["chain"], entry["account_id"], entry["legal_basis"]) == (
        "disclosure",
        "platform",
        account.account_id,
        "Subpoena 2026-SC-0142",
    )
    assert entry["detail"] == {"authority": "Cook County Circuit Court"}
    assert entry["personal"] == {"description": body["description"]}
    assert entry["actor"] == f"operator:{OPERATOR}"
    assert_problem(no_basis, 422, "validation_failed")
    assert_problem(missing, 422, "validation_failed")
    assert_problem(unknown, 404, "not_found")
    assert_problem(with_key, 401, "unauthorized")
    platform = await api.client.get(
        "/admin/v1/audit-log", headers=reading(operator), params={"action": "disclosure"}
    )
    assert [e["id"] for e in platform.json()["data"]] == [entry["id"]]
    assert "disclosure" not in {e["action"] for e in await audit_log(api, account)}
    verified = await api.client.get("/admin/v1/audit-log/verify", headers=operator)
    assert verified.json()["valid"] is True
