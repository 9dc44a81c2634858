"""Storage: `Database.write` — one transaction, its result returned, nothing kept on failure."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.clock import utc_now
from amnex.db.bulk import update_rows
from amnex.db.engine import Database
from amnex.privacy.audit import AuditEntry, record_audit

pytestmark = pytest.mark.usefixtures("empty_audit_log")


async def audit_count(db: Database) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


async def test_write_commits_and_returns_the_result(db: Database) -> None:
    async def work(session: AsyncSession) -> str:
        entry = record_audit(session, actor="test", action="a.b", target_type="t", target_id="x1")
        return entry.id

    entry_id = await db.write(work)
    assert entry_id.startswith("aud_")
    assert await audit_count(db) == 1


async def test_write_keeps_nothing_when_the_work_fails(db: Database) -> None:
    async def work(session: AsyncSession) -> None:
        record_audit(session, actor="test", action="a.b", target_type="t", target_id="x1")
        await session.flush()
        raise RuntimeError("half way")

    with pytest.raises(RuntimeError, match="half way"):
        await db.write(work)
    assert await audit_count(db) == 0


async def test_concurrent_writes_all_land(db: Database) -> None:
    async def work(session: AsyncSession) -> None:
        record_audit(session, actor="test", action="a.b", target_type="t", target_id="x")

    await asyncio.gather(*(db.write(work) for _ in range(50)))
    assert await audit_count(db) == 50


async def test_update_rows_changes_each_row_by_its_key(db: Database) -> None:
    async def seed(session: AsyncSession) -> list[str]:
        entries = [
            record_audit(session, actor="test", action="a.b", target_type="t", target_id=f"x{i}")
            for i in range(3)
        ]
        return [e.id for e in entries]

    ids = await db.write(seed)

    async def change(session: AsyncSession) -> None:
        await update_rows(
            session,
            AuditEntry,
            [{"id": ids[0], "action": "first"}, {"id": ids[2], "action": "third", "at": utc_now()}],
            key=("id",),
        )

    await db.write(change)
    async with db.read_session() as session:
        rows = await session.execute(select(AuditEntry.id, AuditEntry.action))
        actions = {row[0]: row[1] for row in rows}
    assert actions == {ids[0]: "first", ids[1]: "a.b", ids[2]: "third"}
