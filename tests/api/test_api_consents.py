"""`/v1/consents`: the consent ledger over HTTP — record, read, list, CSV export, verify, the
evidence and conflict codes, scopes and Idempotency-Key."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from api_checks import assert_problem
from sqlalchemy import text

from amnex.accounts import service as accounts
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from support import AccountHandle, make_account, serve_api

NUMBER = "+13125550150"
TEXT = "Yes, text me offers from Shop Example. Reply STOP to stop."


def grant(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "sms",
        "address": NUMBER,
        "purpose": "marketing",
        "source": "web_form",
        "text_shown": TEXT,
        "evidence": {
            "ip": "198.51.100.4",
            "url": "https://shop.example/join",
            "user_agent": "Mozilla/5.0",
        },
        "occurred_at": (utc_now() - timedelta(minutes=2)).isoformat(),
    }
    body.update(change)
    return body


async def key_with(db: Database, account: AccountHandle, *scopes: str) -> dict[str, str]:
    async with db.unit_of_work() as session:
        _, plaintext = await accounts.create_api_key(
            session, account_id=account.account_id, name="k", scopes=list(scopes), actor="test"
        )
    return {"Authorization": f"Bearer {plaintext}"}


async def test_an_account_records_reads_lists_and_verifies_consents(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        created = await api.client.post(
            "/v1/consents", headers=account.headers, json=grant(address="+1 312 555 0150")
        )
        revoked = await api.client.post(
            "/v1/consents",
            headers=account.headers,
            json={
                "channel": "sms",
                "address": NUMBER,
                "purpose": "marketing",
                "action": "revoked",
                "source": "keyword",
                "evidence": {"text": "STOP"},
                "occurred_at": utc_now().isoformat(),
            },
        )
        fetched = await api.client.get(created.headers["location"], headers=account.headers)
        listed = await api.client.get("/v1/consents", headers=account.headers)
        grants = await api.client.get(
            "/v1/consents", headers=account.headers, params={"action": "granted"}
        )
        verified = await api.client.get("/v1/consents/verify", headers=account.headers)
        unknown = await api.client.get(f"/v1/consents/{new_id('cns')}", headers=account.headers)
        malformed = await api.client.get("/v1/consents/nope", headers=account.headers)

    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["id"].startswith("cns_")
    assert created.headers["location"] == f"/v1/consents/{entry['id']}"
    assert entry["address"] == NUMBER
    assert entry["account_id"] == account.account_id
    assert (entry["seq"], entry["action"], entry["purpose"]) == (1, "granted", "marketing")
    assert entry["text_shown"] == TEXT
    assert entry["evidence"]["ip"] == "198.51.100.4"
    assert entry["prev_hash"] == "0" * 64
    assert len(entry["hash"]) == 64
    assert entry["recorded_by"].startswith("api_key:key_")
    assert entry["occurred_at"].endswith("Z")
    assert revoked.status_code == 201, revoked.text
    assert revoked.json()["prev_hash"] == entry["hash"]
    assert revoked.json()["text_shown"] is None
    assert fetched.json() == entry
    assert [e["seq"] for e in listed.json()["data"]] == [2, 1]
    assert listed.json()["next_cursor"] is None
    assert [e["id"] for e in grants.json()["data"]] == [entry["id"]]
    assert verified.json() == {
        "valid": True,
        "entries": 2,
        "first_broken": None,
        "head_hash": revoked.json()["hash"],
        "reason": None,
    }
    assert_problem(unknown, 404, "not_found")
    assert_problem(malformed, 404, "not_found")


async def test_verify_reports_a_tampered_entry(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        ids = []
        for _ in range(3):
            response = await api.client.post("/v1/consents", headers=account.headers, json=grant())
            ids.append(response.json()["id"])
        async with db.engine.begin() as conn:
            await conn.execute(
                text("UPDATE consent_entries SET text_shown = 'Anything goes' WHERE id = :id"),
                {"id": ids[1]},
            )
        verified = await api.client.get("/v1/consents/verify", headers=account.headers)

    report = verified.json()
    assert (report["valid"], report["entries"], report["first_broken"]) == (False, 3, ids[1])
    assert ids[1] in report["reason"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"text_shown": None}, "text_shown", id="no-text"),
        pytest.param({"evidence": {"url": "https://shop.example/join"}}, "evidence.ip", id="ip"),
        pytest.param({"evidence": {"ip": "198.51.100.4"}}, "evidence.url", id="url"),
        pytest.param({"source": "paper", "evidence": {}}, "evidence.document", id="paper"),
        pytest.param({"source": "keyword", "evidence": {}}, "evidence.text", id="keyword"),
        pytest.param({"source": "verbal", "evidence": {}}, "evidence.agent", id="verbal"),
    ],
)
async def test_a_grant_without_evidence_is_refused_naming_the_field(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    change: dict[str, Any],
    field: str,
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/consents", headers=account.headers, json=grant(**change)
        )
        listed = await api.client.get("/v1/consents", headers=account.headers)

    problem = assert_problem(response, 422, "consent_evidence_missing")
    assert problem["field"] == field
    assert field in problem["detail"]
    assert listed.json()["data"] == []


@pytest.mark.parametrize(
    ("change", "status", "code", "field"),
    [
        pytest.param({"address": "12"}, 422, "invalid_address", "address", id="address"),
        pytest.param(
            {"occurred_at": (utc_now() + timedelta(hours=2)).isoformat()},
            422,
            "validation_failed",
            "occurred_at",
            id="future",
        ),
        pytest.param(
            {"occurred_at": "2026-01-01T10:00:00"},
            422,
            "validation_failed",
            "occurred_at",
            id="naive",
        ),
        pytest.param(
            {"evidence": {"ip": "1.2.3", "url": "https://a.example"}},
            422,
            "validation_failed",
            "evidence.ip",
            id="bad-ip",
        ),
        pytest.param({"purpose": "research"}, 422, "validation_failed", None, id="purpose"),
        pytest.param({"channel": "all"}, 422, "validation_failed", None, id="channel-all"),
        pytest.param({"colour": "blue"}, 422, "validation_failed", None, id="unknown-field"),
    ],
)
async def test_a_malformed_consent_is_refused_precisely(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    change: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/consents", headers=account.headers, json=grant(**change)
        )

    problem = assert_problem(response, status, code)
    if field is not None:
        assert problem["field"] == field


async def test_a_grant_after_an_opt_out_conflicts_unless_a_fresh_opt_in_overrides_it(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        opt_out = await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={"channel": "sms", "address": NUMBER, "source": "keyword"},
        )
        plain = await api.client.post("/v1/consents", headers=account.headers, json=grant())
        stale = await api.client.post(
            "/v1/consents",
            headers=account.headers,
            json=grant(override_opt_out=True),  # occurred two minutes ago: before the opt-out
        )
        fresh = await api.client.post(
            "/v1/consents",
            headers=account.headers,
            json=grant(override_opt_out=True, occurred_at=utc_now().isoformat()),
        )
        lifted = await api.client.get(
            f"/v1/opt-outs/{opt_out.json()['id']}", headers=account.headers
        )

    conflict = assert_problem(plain, 409, "consent_conflicts_with_opt_out")
    assert conflict["opt_out_id"] == opt_out.json()["id"]
    assert "override_opt_out" in conflict["detail"]
    assert (
        "after the opt-out"
        in assert_problem(stale, 409, "consent_conflicts_with_opt_out")["detail"]
    )
    assert fresh.status_code == 201, fresh.text
    assert fresh.json()["seq"] == 1
    assert_problem(lifted, 404, "not_found")


async def test_the_list_pages_and_exports_csv(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other")
    async with serve_api(settings, db) as api:
        for i in range(5):
            body = grant(address=f"+1312555{3000 + i:04d}", text_shown=f"=1+{i} consent")
            response = await api.client.post("/v1/consents", headers=account.headers, json=body)
            assert response.status_code == 201, response.text
        await api.client.post("/v1/consents", headers=other.headers, json=grant())
        seqs: list[list[int]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (
                await api.client.get("/v1/consents", headers=account.headers, params=params)
            ).json()
            seqs.append([e["seq"] for e in page["data"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        exported = await api.client.get(
            "/v1/consents", headers={**account.headers, "Accept": "text/csv"}
        )
        filtered = await api.client.get(
            "/v1/consents",
            headers=account.headers,
            params={"format": "csv", "address": "+1 312 555 3002"},
        )
        bad_cursor = await api.client.get(
            "/v1/consents", headers=account.headers, params={"cursor": "x!"}
        )

    assert seqs == [[5, 4], [3, 2], [1]]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert exported.headers["content-type"].startswith("text/csv")
    assert [int(r["seq"]) for r in rows] == [5, 4, 3, 2, 1]
    assert rows[0]["text_shown"] == "'=1+4 consent"  # a formula is not run by a spreadsheet
    assert rows[0]["evidence"].startswith("{")
    assert "hash" in rows[0]
    assert [r["address"] for r in csv.DictReader(io.StringIO(filtered.text))] == ["+13125553002"]
    assert_problem(bad_cursor, 400, "invalid_request")


async def test_recording_needs_send_or_manage_and_reading_needs_read(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    read_only = await key_with(db, account, "read")
    manage_only = await key_with(db, account, "manage")
    async with serve_api(settings, db) as api:
        by_reader = await api.client.post("/v1/consents", headers=read_only, json=grant())
        by_manager = await api.client.post("/v1/consents", headers=manage_only, json=grant())
        manager_reads = await api.client.get("/v1/consents", headers=manage_only)
        manager_verifies = await api.client.get("/v1/consents/verify", headers=manage_only)
        reader_verifies = await api.client.get("/v1/consents/verify", headers=read_only)

    assert_problem(by_reader, 403, "forbidden")
    assert by_manager.status_code == 201
    assert_problem(manager_reads, 403, "forbidden")
    assert_problem(manager_verifies, 403, "forbidden")
    assert reader_verifies.json()["entries"] == 1


async def test_an_idempotency_key_records_one_entry(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    body = grant()
    async with serve_api(settings, db) as api:
        headers = {**account.headers, "Idempotency-Key": "consent-1"}
        answers = await asyncio.gather(
            *(api.client.post("/v1/consents", headers=headers, json=body) for _ in range(5))
        )
        replay = await api.client.post("/v1/consents", headers=headers, json=body)
        reused = await api.client.post(
            "/v1/consents", headers=headers, json={**body, "purpose": "transactional"}
        )
        on_opt_outs = await api.client.post(
            "/v1/opt-outs", headers=headers, json={"channel": "sms", "address": NUMBER}
        )
        verified = await api.client.get("/v1/consents/verify", headers=account.headers)

    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert replay.json() == answers[0].json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert_problem(reused, 409, "idempotency_key_reused")
    assert_problem(on_opt_outs, 409, "idempotency_key_reused")
    assert verified.json()["entries"] == 1
