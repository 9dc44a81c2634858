"""Expired Idempotency-Keys are purged in chunks; live ones stay."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select

from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.messages.idempotency import idempotency_row, purge_expired_idempotency_keys
from amnex.messages.models import IdempotencyRecord
from support import AccountHandle


async def test_expired_keys_are_purged_and_live_keys_kept(
    db: Database, account: AccountHandle
) -> None:
    now = utc_now()
    rows = [
        idempotency_row(
            account_id=account.account_id,
            key_hash=f"{i:064x}",
            request_hash="0" * 64,
            resource_id=f"msg_{i}",
            status_code=201,
            now=now - timedelta(hours=30 if i < 25 else 1),
            ttl_s=86_400,
        )
        for i in range(30)
    ]
    async with db.unit_of_work() as session:
        await session.execute(insert(IdempotencyRecord), rows)

    purged = await purge_expired_idempotency_keys(db, now=now, chunk=10)

    assert purged == 25
    async with db.read_session() as session:
        left = list(await session.scalars(select(IdempotencyRecord.key_hash)))
    assert sorted(left) == [f"{i:064x}" for i in range(25, 30)]
