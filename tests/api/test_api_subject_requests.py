"""`/v1/privacy/requests` and `/admin/v1/privacy/requests`: data-subject requests over HTTP —
filing, reading, the export ZIP, extension, the `manage` scope, the operator's reason header,
and a restriction that makes the next send fail."""

from __future__ import annotations

import io
import json
import zipfile

from api_checks import assert_problem
from sqlalchemy import select

from amnex.accounts import service as accounts
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.privacy.audit import AuditEntry
from support import AccountHandle, make_operator, serve_api

READER = "reader@example.com"
REASON = {"X-Amnex-Reason": "ticket DPO-7"}


async def key_with(db: Database, account: AccountHandle, *scopes: str) -> dict[str, str]:
    async with db.unit_of_work() as session:
        _, plaintext = await accounts.create_api_key(
            session, account_id=account.account_id, name="k", scopes=list(scopes), actor="test"
        )
    return {"Authorization": f"Bearer {plaintext}"}


async def test_an_account_files_an_access_request_reads_it_and_downloads_its_export(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        sent = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={"channel": "email", "to": READER, "subject": "Hi", "body": "Hello"},
        )
        filed = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={"type": "access", "address": "Reader@Example.com", "note": "by letter"},
        )
        path = filed.headers["location"]
        fetched = await api.client.get(path, headers=account.headers)
        listed = await api.client.get("/v1/privacy/requests", headers=account.headers)
        export = await api.client.get(f"{path}/export", headers=account.headers)

    assert sent.status_code == 201, sent.text
    assert filed.status_code == 201, filed.text
    body = filed.json()
    assert body["id"].startswith("dsr_")
    assert path == f"/v1/privacy/requests/{body['id']}"
    assert (body["type"], body["status"], body["channel_kind"]) == ("access", "completed", "email")
    assert body["address"] is None
    assert body["address_masked"] != READER
    assert body["requested_by"].startswith("api_key:key_")
    assert [e["action"] for e in body["events"]] == ["received", "in_progress", "completed"]
    assert fetched.json() == body
    assert [r["id"] for r in listed.json()["data"]] == [body["id"]]
    assert export.status_code == 200
    assert export.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(export.content))
    messages = json.loads(archive.read("messages.json"))
    assert [m["id"] for m in messages] == [sent.json()["id"]]
    assert "Hello" not in export.content.decode("latin-1")


async def test_a_restriction_makes_the_next_send_to_the_subject_fail(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        filed = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={"type": "restriction", "address": READER},
        )
        refused = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={"channel": "email", "to": READER, "subject": "Hi", "body": "Hello"},
        )

    assert filed.status_code == 201, filed.text
    assert filed.json()["result"]["opt_out_created"] is True
    assert_problem(refused, 422, "recipient_opted_out")


async def test_requests_need_the_manage_scope(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    reader = await key_with(db, account, "read", "send")
    async with serve_api(settings, db) as api:
        filed = await api.client.post(
            "/v1/privacy/requests", headers=reader, json={"type": "access", "address": READER}
        )
        listed = await api.client.get("/v1/privacy/requests", headers=reader)

    assert_problem(filed, 403, "forbidden")
    assert_problem(listed, 403, "forbidden")


async def test_an_extension_is_granted_once_and_an_erasure_has_no_export(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        filed = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={"type": "erasure", "address": "+1 312 555 0149"},
        )
        path = filed.headers["location"]
        export = await api.client.get(f"{path}/export", headers=account.headers)
        extended = await api.client.post(
            f"{path}/extend", headers=account.headers, json={"days": 30, "reason": "complex"}
        )
        too_long = await api.client.post(
            f"{path}/extend", headers=account.headers, json={"days": 90, "reason": "complex"}
        )

    assert filed.status_code == 201, filed.text
    assert filed.json()["status"] == "completed"
    assert filed.json()["result"]["anonymised"] == {"messages": 0, "consent_entries": 0}
    assert_problem(export, 409, "conflict")
    # a completed request is not extended; nor is any by more than two months
    assert_problem(extended, 409, "conflict")
    assert_problem(too_long, 422, "validation_failed")


async def test_an_operator_files_a_platform_request_with_a_reason_and_it_is_audited(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    token = await make_operator(db, name="Dana Ops")
    operator = {"Authorization": f"Bearer {token}"}
    async with serve_api(settings, db) as api:
        no_reason = await api.client.post(
            "/admin/v1/privacy/requests",
            headers=operator,
            json={"type": "access", "address": READER},
        )
        filed = await api.client.post(
            "/admin/v1/privacy/requests",
            headers={**operator, **REASON},
            json={"type": "access", "address": READER},
        )
        path = filed.headers["location"]
        read = await api.client.get(path, headers={**operator, **REASON})
        export = await api.client.get(f"{path}/export", headers={**operator, **REASON})
        listed = await api.client.get("/admin/v1/privacy/requests", headers={**operator, **REASON})
        client_view = await api.client.get(
            f"/v1/privacy/requests/{filed.json()['id']}", headers=account.headers
        )

    assert_problem(no_reason, 400, "reason_required")
    assert filed.status_code == 201, filed.text
    assert filed.json()["account_id"] is None
    assert filed.json()["requested_by"].startswith("operator:opr_")
    assert read.status_code == 200
    assert export.status_code == 200
    assert [r["id"] for r in listed.json()["data"]] == [filed.json()["id"]]
    # an account never sees the operator's platform request
    assert_problem(client_view, 404, "not_found")
    async with db.read_session() as session:
        audited = list(
            await session.execute(
                select(AuditEntry.action, AuditEntry.reason).where(
                    AuditEntry.target_id == filed.json()["id"]
                )
            )
        )
    assert ("subject_request.received", "ticket DPO-7") in audited
    assert ("subject_request.exported", "ticket DPO-7") in audited
    assert ("subject_request.read", "ticket DPO-7") in audited
