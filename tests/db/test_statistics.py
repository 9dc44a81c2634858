"""Storage: a table that grows from empty gets planner statistics before autovacuum's round,
so prepared statements stop reading it whole."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from amnex.db.engine import Database
from amnex.db.statistics import ANALYZE_LOCK_KEY, analyze_grown_tables

RECEIPTS = 20_000


async def store_receipts(db: Database, count: int) -> None:
    async with db.unit_of_work() as session:
        await session.execute(
            text(
                "INSERT INTO pending_receipts "
                "(connector_id, provider_message_id, id_key, state, status, received_at) "
                "SELECT 'c1', lpad(n::text, 8, '0'), 'key-' || n, 'DELIVRD', 'delivered', "
                "now() FROM generate_series(1, :n) AS n"
            ),
            {"n": count},
        )
        # Counted in pg_stat_user_tables once this transaction ends, not up to 10 s later.
        await session.execute(text("SELECT pg_stat_force_next_flush()"))


async def grown_and_analyzed(db: Database, table: str, *, timeout_s: float = 15.0) -> list[str]:
    """`analyze_grown_tables` once `table` is among what it analyzed (statistics reach
    pg_stat_user_tables shortly after the inserting transaction ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        analyzed = await analyze_grown_tables(db)
        if table in analyzed or time.monotonic() > deadline:
            return analyzed
        await asyncio.sleep(0.2)


@pytest.mark.postgres
async def test_a_table_that_grew_from_empty_is_analyzed_and_its_plans_use_the_index(
    db: Database,
) -> None:
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        client = raw.driver_connection
        assert client is not None
        # Given an empty, analyzed table and a statement prepared on it, its generic plan
        # made while the table was empty
        await client.execute("ANALYZE pending_receipts")
        await client.execute("SET plan_cache_mode = force_generic_plan")
        await client.execute(
            "PREPARE by_keys(text[]) AS SELECT id FROM pending_receipts WHERE id_key = ANY($1)"
        )
        await client.execute("EXECUTE by_keys('{key-1}')")

        async def plan() -> str:
            rows = await client.fetch("EXPLAIN EXECUTE by_keys('{key-1,key-2}')")
            return "\n".join(row[0] for row in rows)

        # When 20,000 rows arrive
        await store_receipts(db, RECEIPTS)
        # Then the plan made on the empty table still reads it whole
        assert "Seq Scan" in await plan()

        # When the grown tables are analyzed
        analyzed = await grown_and_analyzed(db, "pending_receipts")

        # Then the table was among them, and the same prepared statement now uses its index
        assert "pending_receipts" in analyzed
        replanned = await plan()
        assert "Seq Scan" not in replanned
        assert "Index" in replanned
        # And a table that has not grown since is left to autovacuum
        assert "pending_receipts" not in await analyze_grown_tables(db)
        await client.execute("DEALLOCATE by_keys")
        await client.execute("RESET plan_cache_mode")


@pytest.mark.postgres
async def test_one_worker_at_a_time_analyzes(db: Database) -> None:
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        other_worker = raw.driver_connection
        assert other_worker is not None
        # Given a table grown from empty, and another worker holding the check's lock
        await other_worker.execute("ANALYZE pending_receipts")
        await store_receipts(db, RECEIPTS)
        await other_worker.execute(f"SELECT pg_advisory_lock({ANALYZE_LOCK_KEY})")
        try:
            # When this worker looks for grown tables
            # Then it leaves them to the other
            assert await analyze_grown_tables(db) == []
        finally:
            await other_worker.execute(f"SELECT pg_advisory_unlock({ANALYZE_LOCK_KEY})")
        # And once the lock is free, it analyzes the table itself
        assert "pending_receipts" in await grown_and_analyzed(db, "pending_receipts")


async def test_on_sqlite_nothing_is_analyzed(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite only")
    # Given SQLite, whose planner keeps no plans across statements
    # When the grown tables are looked for
    # Then there are none to analyze
    assert await analyze_grown_tables(db) == []
