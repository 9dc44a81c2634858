"""Storage: the accept path's batch insert writes what the models read, atomically."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from amnex.accounts.models import Account
from amnex.clock import utc_now
from amnex.db.bulk import BatchConflict, BulkInserter
from amnex.db.engine import Database
from amnex.db.models import Base
from amnex.privacy.audit import AuditEntry

AUDIT = Base.metadata.tables[AuditEntry.__tablename__]
ACCOUNTS = Base.metadata.tables[Account.__tablename__]


def audit_row(i: int) -> dict[str, object]:
    return {
        "id": f"aud_{i:04d}",
        "at": utc_now() - timedelta(hours=i),
        "actor": "bulk",
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
