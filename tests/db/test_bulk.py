"""Storage: the accept path's batch insert writes what the models read, atomically."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from amnex.accounts.models import Account
from amnex.clock import utc_now
from amnex.db.bulk import BatchConflict, BulkInserter, insert_rows
from amnex.db.engine import Database
from amnex.db.models import Base
from amnex.dispatch.wakeup import asyncpg_dsn
from amnex.privacy.audit import AuditEntry

AUDIT = Base.metadata.tables[AuditEntry.__tablename__]
ACCOUNTS = Base.metadata.tables[Account.__tablename__]

pytestmark = pytest.mark.usefixtures("empty_audit_log")


def audit_row(i: int) -> dict[str, object]:
    return {
        "id": f"aud_{i:04d}",
        "at": utc_now() - timedelta(hours=i),
        # Chain fields written as given: this table serves here as any table would.
        "chain": "bulk",
        "seq": i + 1,
        "actor_kind": "bulk",
        "prev_hash": f"{i:064d}",
        "hash": f"{i + 1:064d}",
        "action": "test",
        "target_type": "x",
        "target_id": str(i),
        "detail": {"n": i, "text": "naïve ☃"},
    }


async def test_rows_read_back_exactly_through_the_models(db: Database) -> None:
    inserter = BulkInserter(db, [AUDIT])
    rows = [audit_row(i) for i in range(5)]
    try:
        await inserter.insert([(AUDIT, rows)])
    finally:
        inserter.close()
    async with db.read_session() as session:
        stored = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    assert [(e.id, e.at, e.detail) for e in stored] == [
        (r["id"], r["at"], r["detail"]) for r in rows
    ]


async def test_a_conflict_writes_nothing_of_the_batch(db: Database) -> None:
    inserter = BulkInserter(db, [AUDIT, ACCOUNTS])
    try:
        await inserter.insert([(AUDIT, [audit_row(1)])])
        with pytest.raises(BatchConflict):
            await inserter.insert([(AUDIT, [audit_row(2), audit_row(3), audit_row(1)])])
    finally:
        inserter.close()
    async with db.read_session() as session:
        count = await session.scalar(select(func.count()).select_from(AuditEntry))
    assert count == 1


async def test_a_value_the_driver_cannot_bind_leaves_the_connection_usable(db: Database) -> None:
    inserter = BulkInserter(db, [AUDIT])
    bad = {**audit_row(7), "target_id": object()}  # no driver can bind an arbitrary object
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's own error type
            await inserter.insert([(AUDIT, [audit_row(5), bad])])
        await inserter.insert([(AUDIT, [audit_row(6)])])
    finally:
        inserter.close()
    async with db.read_session() as session:
        ids = list(await session.scalars(select(AuditEntry.id)))
    assert ids == ["aud_0006"]


async def test_timestamps_written_in_bulk_compare_and_read_back_as_the_orm_writes_them(
    db: Database,
) -> None:
    whole = datetime(2026, 11, 28, 17, 0, 0, tzinfo=UTC)
    instants = [
        whole,
        whole + timedelta(microseconds=1),
        datetime(2026, 11, 28, 22, 0, 0, 500000, tzinfo=timezone(timedelta(hours=5))),
    ]
    rows = [{**audit_row(i), "at": at} for i, at in enumerate(instants)]
    async with db.unit_of_work() as session:
        await insert_rows(session, AuditEntry, rows[:2])
        session.add(AuditEntry(**rows[2]))  # the ORM's own way, for comparison
    async with db.read_session() as session:
        stored = list(await session.scalars(select(AuditEntry.at).order_by(AuditEntry.at)))
        not_after_whole = await session.scalar(select(func.count()).where(AuditEntry.at <= whole))
        raw = list(await session.scalars(text("SELECT at FROM audit_log ORDER BY at")))
    assert stored == sorted(instants)
    assert not_after_whole == 1  # `at <= :t` holds for the equal instant, not the later ones
    if db.is_sqlite:  # text in one shape, so text order is time order
        assert raw == [
            "2026-11-28 17:00:00.000000",
            "2026-11-28 17:00:00.000001",
            "2026-11-28 17:00:00.500000",
        ]


async def test_a_value_too_long_for_its_column_is_refused_not_cut(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite does not hold VARCHAR to its length")
    inserter = BulkInserter(db, [AUDIT])
    too_long = {**audit_row(8), "target_type": "t" * 41}  # the column is VARCHAR(40)
    try:
        with pytest.raises(Exception, match="too long"):
            await inserter.insert([(AUDIT, [audit_row(9), too_long])])
    finally:
        inserter.close()
    async with db.read_session() as session:
        count = await session.scalar(select(func.count()).select_from(AuditEntry))
    assert count == 0


async def test_listeners_hear_of_a_batch_once_it_is_written_and_never_of_a_failed_one(
    db: Database,
) -> None:
    if db.is_sqlite:
        pytest.skip("notifications are PostgreSQL's")
    import asyncpg  # type: ignore[import-untyped]

    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(asyncpg_dsn(db.url))
    await listener.add_listener("amnex_bulk_test", lambda *args: heard.put_nowait(args[2]))
    inserter = BulkInserter(db, [AUDIT], notify="amnex_bulk_test")
    try:
        await inserter.insert([(AUDIT, [audit_row(1)])])
        assert await asyncio.wait_for(heard.get(), 5) == "amnex_bulk_test"
        with pytest.raises(BatchConflict):
            await inserter.insert([(AUDIT, [audit_row(2), audit_row(1)])])
        await inserter.insert([(AUDIT, [audit_row(3), audit_row(4)])])
        assert await asyncio.wait_for(heard.get(), 5) == "amnex_bulk_test"
        await asyncio.sleep(0.2)  # a notification of the failed batch would have come by now
        assert heard.empty()
    finally:
        inserter.close()
        await listener.close()
    async with db.read_session() as session:
        ids = list(await session.scalars(select(AuditEntry.id).order_by(AuditEntry.id)))
    assert ids == ["aud_0001", "aud_0003", "aud_0004"]
