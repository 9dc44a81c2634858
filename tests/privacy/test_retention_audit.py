"""Privacy: the purge keeps the audit log and subject-request exports only for their periods —
expired exports deleted, audit personal fields after a year, audit entries after six years,
each chain still verifying from its anchor (policy §5, §8, §9)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.errors import NotFound
from amnex.privacy import requests as dsr
from amnex.privacy.audit import (
    GENESIS_HASH,
    AuditChainHead,
    AuditChainReport,
    AuditEntry,
    AuditPersonal,
    record_audit,
    verify_audit_chain,
)
from amnex.privacy.records import build_records
from amnex.privacy.report import build_report, render_text
from amnex.privacy.retention import PurgeRun, purge_once
from support import AccountHandle, serve_api

# Chains of their own, so no entry written by the fixtures (an account's creation) is in them.
CHAIN_X = "acc_01KXXXXXXXXXXXXXXXXXXXXXXX"
CHAIN_Y = "acc_01KYYYYYYYYYYYYYYYYYYYYYYY"
ACTOR = dsr.Actor(audit="api_key:key_test", pseudonym="api_key:key_test")


async def append(db: Database, chain: str, at: datetime, *, personal: bool = False) -> str:
    """One entry in `chain` dated `at` (hashed with that date, as if written then)."""
    async with db.unit_of_work() as session:
        entry = record_audit(
            session,
            actor="operator:Dana Ops" if personal else "system",
            action="account.read",
            target_type="account",
            target_id=chain,
            account_id=chain,
            detail={"address": "+13125550149"} if personal else None,
            personal=("address",),
        )
        entry.at = at
    return entry.id


async def verify(db: Database, chain: str) -> AuditChainReport:
    async with db.read_session() as session:
        return await verify_audit_chain(session, chain)


async def seqs(db: Database, chain: str) -> list[int]:
    async with db.read_session() as session:
        rows = await session.scalars(
            select(AuditEntry.seq).where(AuditEntry.chain == chain).order_by(AuditEntry.seq)
        )
        return list(rows)


async def personal_ids(db: Database) -> set[str]:
    async with db.read_session() as session:
        return set(await session.scalars(select(AuditPersonal.entry_id)))


async def head_of(db: Database, chain: str) -> AuditChainHead:
    async with db.read_session() as session:
        head = await session.get(AuditChainHead, chain)
    assert head is not None
    return head


async def test_audit_entries_past_retention_go_oldest_first_and_each_chain_still_verifies(
    settings: Settings, db: Database
) -> None:
    # Given two chains whose oldest entries are past a 30-day retention, some with personal
    # fields, and a purge working two rows per transaction
    settings = settings.model_copy(update={"audit_retention_days": 30, "purge_chunk": 2})
    now = utc_now()
    old_x = [
        await append(db, CHAIN_X, now - timedelta(days=100 - i), personal=True)
        for i in (0, 1, 2, 3, 4)
    ]
    young_x = [await append(db, CHAIN_X, now - timedelta(days=d)) for d in (10, 1)]
    for d in (90, 80, 70):
        await append(db, CHAIN_Y, now - timedelta(days=d))
    await append(db, CHAIN_Y, now - timedelta(days=2))
    before_x = await seqs(db, CHAIN_X)

    # When the purge counts (dry run), then runs, then runs again
    dry = await purge_once(db, settings, dry_run=True)
    after_dry = await seqs(db, CHAIN_X)
    done = await purge_once(db, settings)
    again = await purge_once(db, settings)

    # Then the dry run changed nothing, and the run deleted the 8 old entries, oldest first
    assert dry.counts["audit_entries"] == 8
    assert after_dry == before_x == [1, 2, 3, 4, 5, 6, 7]
    assert done.counts["audit_entries"] == 8
    assert again.counts["audit_entries"] == 0
    assert await seqs(db, CHAIN_X) == [6, 7]
    assert await seqs(db, CHAIN_Y) == [4]
    # With their personal fields
    assert not (await personal_ids(db)) & set(old_x)
    # And each chain's anchor is its newest deleted entry, from which it verifies
    head_x = await head_of(db, CHAIN_X)
    assert (head_x.anchor_seq, head_x.seq) == (5, 7)
    assert await verify(db, CHAIN_X) == AuditChainReport(True, 2, None, head_x.hash, None)
    assert (await verify(db, CHAIN_Y)).valid
    async with db.read_session() as session:
        first = await session.get(AuditEntry, young_x[0])
        runs = list(await session.scalars(select(PurgeRun.counts)))
    assert first is not None
    assert first.prev_hash == head_x.anchor_hash
    assert sorted(run["audit_entries"] for run in runs) == [0, 8]
    # And the chain goes on: a new entry follows the last one and verifies
    await append(db, CHAIN_X, utc_now())
    assert await seqs(db, CHAIN_X) == [6, 7, 8]
    assert (await verify(db, CHAIN_X)).valid


async def test_a_chain_entirely_past_retention_is_emptied_and_still_verifies(
    settings: Settings, db: Database
) -> None:
    settings = settings.model_copy(update={"audit_retention_days": 30})
    for d in (50, 40):
        await append(db, CHAIN_X, utc_now() - timedelta(days=d))

    report = await purge_once(db, settings)

    assert report.counts["audit_entries"] == 2
    assert await seqs(db, CHAIN_X) == []
    head = await head_of(db, CHAIN_X)
    assert (head.anchor_seq, head.anchor_hash) == (head.seq, head.hash) == (2, head.hash)
    assert await verify(db, CHAIN_X) == AuditChainReport(True, 0, None, head.hash, None)
    await append(db, CHAIN_X, utc_now())
    assert await seqs(db, CHAIN_X) == [3]
    assert (await verify(db, CHAIN_X)).valid


async def test_entries_cut_from_the_start_without_moving_the_anchor_are_reported(
    settings: Settings, db: Database
) -> None:
    # Given a chain the purge shortened to entries 3, 4, 5
    settings = settings.model_copy(update={"audit_retention_days": 30})
    for d in (50, 40):
        await append(db, CHAIN_X, utc_now() - timedelta(days=d))
    kept = [await append(db, CHAIN_X, utc_now()) for _ in range(3)]
    await purge_once(db, settings)
    assert (await verify(db, CHAIN_X)).valid

    # When someone deletes entry 3 without moving the anchor
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE id = :id"), {"id": kept[0]})

    # Then the chain is reported broken at the entry after the cut
    report = await verify(db, CHAIN_X)
    assert not report.valid
    assert report.first_broken == kept[1]
    assert report.reason == f"{kept[1]}: entry 3 of the chain is missing before it"


async def test_an_anchor_moved_past_kept_entries_is_reported(
    settings: Settings, db: Database
) -> None:
    ids = [await append(db, CHAIN_X, utc_now()) for _ in range(3)]
    async with db.unit_of_work() as session:
        await session.execute(
            update(AuditChainHead)
            .where(AuditChainHead.chain == CHAIN_X)
            .values(anchor_seq=1, anchor_hash="f" * 64)
        )

    report = await verify(db, CHAIN_X)

    assert not report.valid
    assert report.first_broken == ids[0]
    assert report.reason is not None
    assert "at or before the chain's anchor" in report.reason


async def test_the_purge_never_deletes_past_a_tampered_entry(
    settings: Settings, db: Database
) -> None:
    # Given four old entries, the second of which was edited
    settings = settings.model_copy(update={"audit_retention_days": 30})
    ids = [await append(db, CHAIN_X, utc_now() - timedelta(days=d)) for d in (60, 50, 40, 35)]
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET action = 'account.delete' WHERE id = :id"), {"id": ids[1]}
        )

    # When the purge runs
    report = await purge_once(db, settings)

    # Then it deleted only the entry before the edit, and the edit is still reported
    assert report.counts["audit_entries"] == 1
    assert await seqs(db, CHAIN_X) == [2, 3, 4]
    verified = await verify(db, CHAIN_X)
    assert not verified.valid
    assert verified.first_broken == ids[1]


async def test_audit_personal_fields_past_their_retention_go_and_the_chain_verifies(
    settings: Settings, db: Database
) -> None:
    # Given entries with personal fields 800, 400 and 10 days old, and a 365-day retention
    settings = settings.model_copy(update={"purge_chunk": 1})
    now = utc_now()
    old = [await append(db, CHAIN_X, now - timedelta(days=d), personal=True) for d in (800, 400)]
    young = await append(db, CHAIN_X, now - timedelta(days=10), personal=True)

    # When the purge counts, then runs
    dry = await purge_once(db, settings, dry_run=True)
    kept_after_dry = await personal_ids(db)
    done = await purge_once(db, settings)

    # Then the two old entries lost their personal fields, the entries stayed, the chain holds
    assert dry.counts["audit_personal"] == 2
    assert kept_after_dry >= {*old, young}
    assert done.counts["audit_personal"] == 2
    assert done.counts["audit_entries"] == 0
    remaining = await personal_ids(db)
    assert young in remaining
    assert not remaining & set(old)
    assert await seqs(db, CHAIN_X) == [1, 2, 3]
    assert (await verify(db, CHAIN_X)).valid
    async with db.read_session() as session:
        shown = await session.get(AuditEntry, old[0])
    assert shown is not None
    assert shown.actor == "operator"  # the name is gone; no operator id was resolvable


async def file_access(db: Database, settings: Settings, account_id: str) -> dsr.SubjectRequest:
    async with db.unit_of_work() as session:
        return await dsr.file_subject_request(
            session,
            account_id=account_id,
            type_="access",
            address="+13125550149",
            note=None,
            actor=ACTOR,
            records=await build_records(session, settings, None),
            export_ttl_days=settings.subject_export_ttl_days,
        )


async def export_count(db: Database) -> int:
    async with db.read_session() as session:
        return int(
            await session.scalar(select(func.count()).select_from(dsr.SubjectRequestExport)) or 0
        )


async def test_an_export_is_kept_its_ttl_then_purged_and_refused(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given an access export under a 2-day export TTL
    settings = settings.model_copy(update={"subject_export_ttl_days": 2})
    request = await file_access(db, settings, account.account_id)
    async with db.read_session() as session:
        export = await session.get(dsr.SubjectRequestExport, request.id)
    assert export is not None
    assert export.expires_at - export.created_at == timedelta(days=2)

    # When the purge runs on day 1, counts on day 3, then runs on day 3
    day_1 = await purge_once(db, settings, now=utc_now() + timedelta(days=1))
    dry = await purge_once(db, settings, now=utc_now() + timedelta(days=3), dry_run=True)
    kept = await export_count(db)
    day_3 = await purge_once(db, settings, now=utc_now() + timedelta(days=3))

    # Then it is kept until it expires, then deleted, and a download is refused
    assert (day_1.counts["exports"], dry.counts["exports"], kept) == (0, 1, 1)
    assert day_3.counts["exports"] == 1
    assert await export_count(db) == 0
    async with db.unit_of_work() as session:
        found = await dsr.get_subject_request_or_raise(session, request.id, account.account_id)
        with pytest.raises(NotFound, match="has expired"):
            await dsr.get_export_or_raise(session, found, ACTOR)


async def test_the_api_keeps_exports_for_the_configured_ttl_and_refuses_expired_ones(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    settings = settings.model_copy(update={"subject_export_ttl_days": 3})
    async with serve_api(settings, db) as api:
        filed = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={"type": "access", "address": "+1 312 555 0149"},
        )
        assert filed.status_code == 201, filed.text
        request_id = filed.json()["id"]
        async with db.unit_of_work() as session:
            export = await session.get(dsr.SubjectRequestExport, request_id)
            assert export is not None
            ttl = export.expires_at - export.created_at
            # Its time has come (the purge has not run yet)
            export.expires_at = utc_now() - timedelta(seconds=1)
        expired = await api.client.get(
            f"/v1/privacy/requests/{request_id}/export", headers=account.headers
        )

    assert ttl == timedelta(days=3)
    assert expired.status_code == 404
    assert expired.headers["content-type"].startswith("application/problem+json")
    assert expired.json()["code"] == "not_found"
    assert expired.json()["detail"] == f"the export of {request_id} has expired"


async def test_the_privacy_report_states_the_audit_retention_and_the_oldest_entry(
    settings: Settings, db: Database
) -> None:
    settings = settings.model_copy(update={"audit_retention_days": 30})
    now = utc_now()
    await append(db, CHAIN_X, now - timedelta(days=45))
    await append(db, CHAIN_Y, now - timedelta(days=5))

    async with db.read_session() as session:
        before = await build_report(session, settings, None, now=now)
    await purge_once(db, settings)
    async with db.read_session() as session:
        after = await build_report(session, settings, None, now=now)

    assert (before.audit.retention_days, before.audit.personal_retention_days) == (30, 365)
    assert before.audit.oldest_age_days == 45
    assert (
        "the oldest audit entry is 45 days old, past the 30-day audit retention "
        "(is `amnex worker` running?)"
    ) in before.findings
    assert after.audit.oldest_age_days == 5
    assert not any("audit" in f for f in after.findings)
    assert "audit log: entries kept 30 days, personal fields 365; oldest entry 5 days old" in (
        render_text(after)
    )


async def test_a_new_chain_starts_at_the_genesis_anchor(db: Database) -> None:
    await append(db, CHAIN_X, utc_now())

    head = await head_of(db, CHAIN_X)

    assert (head.anchor_seq, head.anchor_hash) == (0, GENESIS_HASH)
