"""Storage: `in_list` / `not_in_list` select what IN / NOT IN select, as one statement on
PostgreSQL whatever the list's length."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.db.lists import in_list, not_in_list
from amnex.receipts.models import PendingReceipt


async def stored_receipts(db: Database, count: int) -> list[int]:
    async with db.unit_of_work() as session:
        rows = [
            PendingReceipt(
                connector_id="c1",
                provider_message_id=f"{i:08d}",
                id_key=f"key-{i}",
                state="DELIVRD",
                status="delivered",
                received_at=utc_now(),
            )
            for i in range(count)
        ]
        session.add_all(rows)
        await session.flush()
        return sorted(row.id for row in rows)


@pytest.mark.parametrize("wanted", [0, 1, 3, 40])
async def test_in_list_selects_exactly_the_rows_listed_by_text_or_number(
    db: Database, wanted: int
) -> None:
    # Given 50 stored receipts
    ids = await stored_receipts(db, 50)
    keys = [f"key-{i}" for i in range(wanted)] + ["key-absent"]
    async with db.unit_of_work() as session:
        # When rows are selected by a list of text keys, and by a list of numeric ids
        by_key = await session.scalars(
            select(PendingReceipt.id_key).where(in_list(session, PendingReceipt.id_key, keys))
        )
        by_id = await session.scalars(
            select(PendingReceipt.id).where(in_list(session, PendingReceipt.id, ids[:wanted]))
        )
        # Then each list selects exactly its rows, none for an empty list
        assert sorted(by_key) == sorted(keys[:wanted])
        assert sorted(by_id) == ids[:wanted]


@pytest.mark.parametrize("excluded", [0, 1, 49])
async def test_not_in_list_selects_every_other_row(db: Database, excluded: int) -> None:
    # Given 50 stored receipts
    ids = await stored_receipts(db, 50)
    async with db.unit_of_work() as session:
        # When rows are selected by the ids not in a list (possibly empty)
        rest = await session.scalars(
            select(PendingReceipt.id).where(not_in_list(session, PendingReceipt.id, ids[:excluded]))
        )
        # Then every other row is selected; an empty list excludes nothing
        assert sorted(rest) == ids[excluded:]


@pytest.mark.postgres
async def test_lists_of_every_length_share_one_prepared_statement(db: Database) -> None:
    # Given 30 stored receipts
    ids = await stored_receipts(db, 30)

    async def prepared(session: AsyncSession) -> int:
        """The connection's prepared statements that select receipt ids."""
        return int(
            await session.scalar(
                select(func.count())
                .select_from(text("pg_prepared_statements"))
                .where(text(r"statement ~ '^SELECT pending_receipts\.id\s'"))
            )
            or 0
        )

    async with db.unit_of_work() as db_session:
        # When one query runs with lists of 30 different lengths on one connection
        for length in range(1, 31):
            await db_session.scalars(
                select(PendingReceipt.id).where(
                    in_list(db_session, PendingReceipt.id, ids[:length])
                )
            )
        # Then PostgreSQL prepared it once
        assert await prepared(db_session) == 1
        # (where IN with one placeholder per value is a statement per length)
        for length in range(1, 31):
            await db_session.scalars(
                select(PendingReceipt.id).where(PendingReceipt.id.in_(ids[:length]))
            )
        assert await prepared(db_session) == 31
