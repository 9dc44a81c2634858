"""Privacy: the report states from the live data whether content is encrypted, whether any is
kept past its retention, how old each account's metadata is, and what the purges did."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.messages.models import Message
from amnex.privacy.crypto import generate_key
from amnex.privacy.records import load_records_file
from amnex.privacy.report import PrivacyReport, build_report, render_text
from amnex.privacy.requests import SubjectRequest
from amnex.privacy.retention import PurgeRun, purge_once
from support import AccountHandle, make_account, serve_api

pytestmark = pytest.mark.asyncio

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "privacy-records.example.toml"
EMAIL = {"channel": "email", "to": "kim@example.com", "subject": "Hi", "body": "Hello Kim"}


async def send(settings: Settings, db: Database, account: AccountHandle) -> str:
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
    assert sent.status_code == 201, sent.text
    return str(sent.json()["id"])


async def report_of(
    db: Database, settings: Settings, *, now: datetime | None = None
) -> PrivacyReport:
    async with db.read_session() as session:
        return await build_report(session, settings, load_records_file(settings), now=now)


async def set_status(db: Database, message_id: str, status: str, **values: object) -> None:
    async with db.unit_of_work() as session:
        await session.execute(
            update(Message).where(Message.id == message_id).values(status=status, **values)
        )


async def test_encryption_is_reported_on_with_the_suites_master_key(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    await send(settings, db, account)

    report = await report_of(db, settings)

    assert report.encryption.master_key_configured is True
    assert report.encryption.content_keys_live >= 1
    assert report.encryption.unencrypted_messages == 0
    assert not any("unencrypted" in finding for finding in report.findings)


@pytest.mark.no_master_key
async def test_a_message_stored_without_a_master_key_is_counted_as_unencrypted(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    plain = settings.model_copy(update={"master_key": None})
    await send(plain, db, account)

    without = await report_of(db, plain)
    # The key configured later does not encrypt what was stored before it
    later = await report_of(
        db, settings.model_copy(update={"master_key": SecretStr(generate_key())})
    )

    assert without.encryption.master_key_configured is False
    assert without.encryption.unencrypted_messages == 1
    assert "no master key: content is stored unencrypted" in without.findings
    assert "1 messages hold content stored unencrypted" in without.findings
    assert later.encryption.master_key_configured is True
    assert later.findings.count("1 messages hold content stored unencrypted") == 1
    assert "no master key: content is stored unencrypted" not in later.findings


async def test_content_past_retention_is_counted_and_is_zero_after_a_purge(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given a delivered message whose content the purge has not taken yet
    message_id = await send(settings, db, account)
    await set_status(db, message_id, "delivered")

    # When the report runs before and after a purge
    before = await report_of(db, settings)
    await purge_once(db, settings)
    after = await report_of(db, settings)

    # Then the content is counted past retention, then no longer
    assert before.content_past_retention == 1
    assert any(f.startswith("1 messages hold content past retention") for f in before.findings)
    assert after.content_past_retention == 0
    assert not any("past retention" in f for f in after.findings)


async def test_a_failed_message_within_its_window_is_not_past_retention(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    message_id = await send(settings, db, account)
    failed_at = utc_now()
    await set_status(db, message_id, "failed", updated_at=failed_at, failed_at=failed_at)

    within = await report_of(db, settings, now=failed_at + timedelta(hours=71))
    beyond = await report_of(db, settings, now=failed_at + timedelta(hours=73))

    assert within.content_past_retention == 0
    assert beyond.content_past_retention == 1


async def test_purges_are_summarised_over_a_day_and_a_month(
    settings: Settings, db: Database
) -> None:
    never = await report_of(db, settings)
    now = utc_now()
    async with db.unit_of_work() as session:
        for days, content in ((3, 5), (40, 7)):
            started = now - timedelta(days=days)
            session.add(
                PurgeRun(
                    id=new_id("prg"),
                    started_at=started,
                    finished_at=started,
                    dry_run=False,
                    counts={"content": content, "metadata": 1, "keys_destroyed": 0},
                )
            )
    await purge_once(db, settings)

    report = await report_of(db, settings)

    assert never.purges.last_run_at is None
    assert "no purge ran in the last 24 hours (is `amnex worker` running?)" in never.findings
    assert report.purges.last_run_at is not None
    assert report.purges.last_run_at >= now
    assert report.purges.last_24h.runs == 1
    audit_and_exports = {
        "exports": 0,
        "audit_personal": 0,
        "audit_entries": 0,
        "webhook_log": 0,
    }
    assert report.purges.last_24h.counts == {
        "content": 0,
        "metadata": 0,
        "keys_destroyed": 0,
        **audit_and_exports,
    }
    assert report.purges.last_30d.runs == 2
    assert report.purges.last_30d.counts == {
        "content": 5,
        "metadata": 1,
        "keys_destroyed": 0,
        **audit_and_exports,
    }
    assert not any("no purge ran" in f for f in report.findings)


async def test_metadata_age_is_reported_per_account_against_its_retention(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other Shop")
    old_id = await send(settings, db, account)
    await send(settings, db, other)
    created = utc_now() - timedelta(days=400)
    await set_status(db, old_id, "delivered", created_at=created)

    report = await report_of(db, settings)

    by_account = {a.account_id: a for a in report.metadata}
    assert set(by_account) == {account.account_id, other.account_id}
    old = by_account[account.account_id]
    assert (old.business_name, old.oldest_age_days, old.retention_days) == (
        "Shop Example",
        400,
        settings.metadata_retention_days,
    )
    assert old.messages_past_retention == 1
    young = by_account[other.account_id]
    assert (young.oldest_age_days, young.messages_past_retention) == (0, 0)
    assert (
        f"account {account.account_id} holds 1 messages past the 365-day metadata retention "
        "(oldest 400 days)"
    ) in report.findings


async def test_records_not_configured_are_findings_and_subject_requests_are_reported(
    settings: Settings, db: Database
) -> None:
    defaults = await report_of(db, settings)
    configured = await report_of(db, settings.model_copy(update={"privacy_records_file": EXAMPLE}))

    assert defaults.records.configured is False
    assert "privacy contact not configured" in defaults.findings
    assert "supervisory authority not configured" in defaults.findings
    assert configured.records.configured is True
    assert configured.records.missing == []
    assert not any("not configured" in f for f in configured.findings)
    assert defaults.not_covered == []
    assert defaults.subject_requests.model_dump() == {"open": 0, "overdue": 0, "next_due_at": None}
    text = render_text(defaults)
    assert "subject requests: 0 open, 0 overdue" in text
    assert "  - privacy contact not configured" in text


async def test_an_overdue_subject_request_is_a_finding(settings: Settings, db: Database) -> None:
    account = await make_account(db)
    received = utc_now() - timedelta(days=40)
    async with db.unit_of_work() as session:
        session.add(
            SubjectRequest(
                id=new_id("dsr"),
                account_id=account.account_id,
                type="erasure",
                channel_kind="phone",
                address="+13125550149",
                address_masked="+1*******49",
                status="in_progress",
                received_at=received,
                due_at=received + timedelta(days=30),
                requested_by="test",
                updated_at=received,
            )
        )

    report = await report_of(db, settings)

    assert report.subject_requests.open == 1
    assert report.subject_requests.overdue == 1
    assert "1 data-subject requests are past their deadline" in report.findings
