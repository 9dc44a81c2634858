"""Fresh planner statistics for tables that grow from (nearly) empty (PostgreSQL).

PostgreSQL plans a prepared statement afresh for its first five runs and then settles on a
generic plan, which it keeps until the table's statistics change: an ANALYZE or a VACUUM
of the table invalidates it. A generic plan made while a table held a few pages reads the
whole table (`Seq Scan`), which is right for ten pages and ruinous for a hundred thousand
rows. Autovacuum analyzes a table once 50 rows plus 10 % of it have changed, but its
launcher visits each database only once per `autovacuum_naptime` (60 s) and then works
table by table. A fresh installation that is sent traffic at once is a bulk load, after
which PostgreSQL's documentation asks for an ANALYZE: measured here, a new database sent
1,337 SMS/s by `bench/soak.py` read `message_parts` whole for every receipt batch for
about 90 s (PostgreSQL at 1.1 cores, a p99 of up to 7.9 s, 22,198 requests not sent in
time) until autovacuum first analyzed it.

`analyze_grown_tables` analyzes each table of the schema that holds at least
`GROWTH_FACTOR` times the rows its last analysis counted (and at least `MIN_NEW_ROWS`
more): a table that grew from nearly empty, or was emptied and filled again. From empty at
a steady rate that is a handful of analyses (at about 2,000, 8,000, 32,000 ... rows); a
table in its steady state never qualifies (autovacuum's 10 % of changes comes long before
it has grown fourfold), so the check is one read of `pg_stat_user_tables` every
`CHECK_INTERVAL_S` in each worker. One worker at a time checks and analyzes (a transaction
advisory lock; the others skip that round), and `ANALYZE (SKIP_LOCKED)` leaves a table
autovacuum is working on to it. Without the right to analyze a table (only its owner may),
PostgreSQL warns and skips it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from sqlalchemy import text

from amnex.db.engine import Database

log = logging.getLogger(__name__)

GROWTH_FACTOR: Final = 4.0
MIN_NEW_ROWS: Final = 2_000
CHECK_INTERVAL_S: Final = 10.0
# pg_try_advisory_xact_lock's key for the check: "amnex" in ASCII, then 1.
ANALYZE_LOCK_KEY: Final = 0x616D6E6578_01

# n_live_tup is the statistics system's running count; reltuples what the last ANALYZE or
# VACUUM counted (-1 for a table never analyzed, PostgreSQL 14+).
_GROWN: Final = text(
    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.schemaname = current_schema() "
    "AND s.n_live_tup >= :factor * greatest(c.reltuples, 0) "
    "AND s.n_live_tup - greatest(c.reltuples, 0) >= :min_rows "
    "ORDER BY s.relname"
)


async def analyze_grown_tables(db: Database) -> list[str]:
    """ANALYZE the tables that grew `GROWTH_FACTOR` times past their statistics; their names.
    Nothing on SQLite, whose planner keeps no plans across statements."""
    if db.is_sqlite:
        return []
    quote = db.engine.dialect.identifier_preparer.quote
    async with db.unit_of_work() as session:
        lock = text("SELECT pg_try_advisory_xact_lock(:key)")
        if not await session.scalar(lock, {"key": ANALYZE_LOCK_KEY}):
            return []  # another worker is at it
        grown = list(
            await session.scalars(_GROWN, {"min_rows": MIN_NEW_ROWS, "factor": GROWTH_FACTOR})
        )
        for name in grown:
            await session.execute(text(f"ANALYZE (SKIP_LOCKED) {quote(name)}"))
    return grown


async def analyze_forever(db: Database, *, interval_s: float = CHECK_INTERVAL_S) -> None:
    """`analyze_grown_tables` every `interval_s`, for as long as the worker runs."""
    while True:
        try:
            for name in await analyze_grown_tables(db):
                log.info("analyzed %s: it grew past its planner statistics", name)
        except Exception:
            log.exception("analyzing grown tables failed; retrying at the next interval")
        await asyncio.sleep(interval_s)
