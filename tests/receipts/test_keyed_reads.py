"""Storage: the workers' keyed reads (db/reads.py) give what the ORM gives, hold their row
locks for the session's transaction, and fail a lost connection as a retryable error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from test_apply import NUMBER, sent_message

from amnex.db.engine import Database, is_transient_db_error
from amnex.db.reads import KeyedRead
from amnex.messages.models import Message, MessagePart
from support import AccountHandle, make_account

PART_COLUMNS = (
    MessagePart.message_id,
    MessagePart.part,
    MessagePart.provider_message_id,
    MessagePart.status,
    MessagePart.updated_at,
)
PARTS = KeyedRead(PART_COLUMNS, key=MessagePart.message_id)
LOCKED = KeyedRead(
    (Message.id, Message.status, Message.event_seq, Message.created_at),
    key=Message.id,
    order_by=(Message.id,),
    for_update=True,
)


@pytest.fixture
async def sms_account(db: Database) -> AccountHandle:
    return await make_account(db, sms_number=NUMBER)


@pytest.fixture
async def other(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of another process to the same database."""
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    yield connection
    await connection.close()


async def read_after_losing_the_connection(
    db: Database, admin: asyncpg.Connection, message_id: str
) -> None:
    async with db.unit_of_work() as session:
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # the server ends the worker's connection mid-transaction
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await LOCKED.rows(session, [message_id])


async def test_a_keyed_read_gives_the_rows_the_orm_gives(
    db: Database, sms_account: AccountHandle
) -> None:
    # Given two sent messages, one of two parts
    first = await sent_message(db, sms_account, ["a1", "a2"], body="x" * 200)
    second = await sent_message(db, sms_account, ["b1"])

    async with db.unit_of_work() as session:
        # When their parts and rows are read by key, and by the ORM
        parts = await PARTS.rows(session, [first, second, "msg_unknown"])
        orm_parts = (
            await session.execute(
                select(*PART_COLUMNS).where(MessagePart.message_id.in_([first, second]))
            )
        ).all()
        locked = await LOCKED.rows(session, [second, first])
        nothing = await PARTS.rows(session, [])

    # Then the rows are the ORM's, named as its columns, timestamps aware of UTC
    assert sorted(tuple(p) for p in parts) == sorted(tuple(p) for p in orm_parts)
    assert sorted((p.message_id, p.part, p.provider_message_id) for p in parts) == [
        (first, 1, "a1"),
        (first, 2, "a2"),
        (second, 1, "b1"),
    ]
    assert all(p.status == "sent" and p.updated_at.tzinfo == UTC for p in parts)
    # And the locked rows come in key order, with their columns' Python values
    assert [row.id for row in locked] == sorted([first, second])
    assert [row.status for row in locked] == ["sent", "sent"]
    assert all(row.event_seq >= 3 for row in locked)
    assert all(row.created_at.tzinfo == UTC for row in locked)
    assert nothing == []


@pytest.mark.postgres
async def test_a_keyed_read_for_update_holds_its_locks_until_the_transaction_ends(
    db: Database, sms_account: AccountHandle, other: asyncpg.Connection
) -> None:
    message_id = await sent_message(db, sms_account, ["c1"])
    lock = "SELECT id FROM messages WHERE id = $1 FOR UPDATE NOWAIT"
    async with db.unit_of_work() as session:
        # When a worker's transaction reads the row FOR UPDATE
        assert [row.id for row in await LOCKED.rows(session, [message_id])] == [message_id]
        # Then nobody else can lock it while the transaction lasts
        with pytest.raises(asyncpg.LockNotAvailableError):
            async with other.transaction():
                await other.fetch(lock, message_id)
    # And once it commits, they can
    async with other.transaction():
        assert len(await other.fetch(lock, message_id)) == 1


@pytest.mark.postgres
async def test_a_keyed_read_on_a_lost_connection_fails_as_a_retryable_database_error(
    db: Database, sms_account: AccountHandle, other: asyncpg.Connection
) -> None:
    message_id = await sent_message(db, sms_account, ["d1"])
    # When the server ends the worker's connection in the middle of its transaction
    with pytest.raises(DBAPIError) as raised:
        await read_after_losing_the_connection(db, other, message_id)
    # Then the read fails as the writers' retry loops expect of a lost connection
    assert is_transient_db_error(raised.value)
    # And the pool hands out a working connection afterwards
    async with db.unit_of_work() as session:
        assert [row.id for row in await LOCKED.rows(session, [message_id])] == [message_id]
