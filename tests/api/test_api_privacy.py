"""`/v1/privacy/records`, `/admin/v1/privacy/records` and `/admin/v1/privacy/report`: any key
with `read` sees the records, operators see them and the report; the report names accounts,
so it needs a reason and is audited with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_checks import assert_problem
from sqlalchemy import select

from amnex.accounts import service as accounts
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.privacy.audit import AuditEntry
from support import AccountHandle, ApiServer, make_operator, serve_api

pytestmark = pytest.mark.asyncio

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "privacy-records.example.toml"


@pytest.fixture
async def api(settings: Settings, db: Database) -> AsyncIterator[ApiServer]:
    configured = settings.model_copy(update={"privacy_records_file": EXAMPLE})
    async with serve_api(configured, db) as server:
        yield server


@pytest.fixture
async def operator(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_operator(db, name='Dana Ops')}"}


async def read_only_key(db: Database, account: AccountHandle, scopes: list[str]) -> dict[str, str]:
    async with db.unit_of_work() as session:
        _, plaintext = await accounts.create_api_key(
            session, account_id=account.account_id, name="k", scopes=scopes, actor="test"
        )
    return {"Authorization": f"Bearer {plaintext}"}


async def test_a_read_key_and_an_operator_get_the_same_records(
    api: ApiServer, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    reader = await read_only_key(db, account, ["read"])

    client = await api.client.get("/v1/privacy/records", headers=reader)
    admin = await api.client.get("/admin/v1/privacy/records", headers=operator)

    assert client.status_code == 200, client.text
    assert admin.status_code == 200, admin.text
    assert client.json() == admin.json()
    records = client.json()
    assert records["configured"] is True
    assert records["privacy_contact"] == "privacy@example.com"
    assert records["data_regions"] == ["EU (Ireland)"]
    assert records["supervisory_authority"] == "Data Protection Commission (Ireland)"
    assert {p["legal_basis"] for p in records["purposes"]} >= {"contract", "consent"}
    assert records["carriers"] == [
        {"name": "smtp", "kind": "smtp", "country": "IE", "enabled": True}
    ]


async def test_records_need_a_key_with_read_scope_and_admin_records_an_operator(
    api: ApiServer, db: Database, account: AccountHandle
) -> None:
    sender = await read_only_key(db, account, ["send"])

    assert_problem(await api.client.get("/v1/privacy/records"), 401, "unauthorized")
    assert_problem(await api.client.get("/v1/privacy/records", headers=sender), 403, "forbidden")
    assert_problem(
        await api.client.get("/admin/v1/privacy/records", headers=account.headers),
        401,
        "unauthorized",
    )


async def test_the_report_needs_an_operator_and_a_reason_and_is_audited(
    api: ApiServer, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    no_operator = await api.client.get(
        "/admin/v1/privacy/report", headers={**account.headers, "X-Amnex-Reason": "x"}
    )
    no_reason = await api.client.get("/admin/v1/privacy/report", headers=operator)
    report = await api.client.get(
        "/admin/v1/privacy/report", headers={**operator, "X-Amnex-Reason": "DPO audit 2026-11"}
    )

    assert_problem(no_operator, 401, "unauthorized")
    assert_problem(no_reason, 400, "reason_required")
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["encryption"]["master_key_configured"] is True
    assert body["content_past_retention"] == 0
    assert body["records"] == {"configured": True, "missing": []}
    assert body["not_covered"] == []
    assert body["subject_requests"] == {"open": 0, "overdue": 0, "next_due_at": None}
    assert isinstance(body["findings"], list)
    async with db.read_session() as session:
        entries = list(
            await session.scalars(select(AuditEntry).where(AuditEntry.action == "privacy.report"))
        )
    assert len(entries) == 1
    assert "Dana Ops" in (entries[0].actor or "")
    assert entries[0].reason == "DPO audit 2026-11"
