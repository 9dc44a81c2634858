"""Bench (issue 7): what one statement costs a worker's write transaction, three ways.

The workers' hot transactions (claims, send outcomes, receipts) read most of their rows
through SQLAlchemy's ORM session (`session.execute(select(...))`), the hottest reads as
compiled text through Core (db/reads.py), and write through Core's `exec_driver_sql`
(db/bulk.py). This measures, in this process's CPU time, a transaction of
`Database.write` (pool checkout, BEGIN, the statements, COMMIT) holding one and then two
identical reads — `SELECT id, status FROM messages WHERE id = ANY(...)` with 15 ids, the
shape of the receipt and outcome paths' reads — issued:

- **orm**: `session.execute(select(Message.id, Message.status).where(in_list(...)))`, as the
  workers' other reads do;
- **core**: the compiled text on the session's connection, `exec_driver_sql`: no statement
  construction, compilation or ORM result handling;
- **driver**: the text on the session's asyncpg connection itself, inside the session's
  transaction (started by SQLAlchemy's adapter first, as its own cursor would).

The second statement's extra cost is the cost of one more statement in a transaction. The
rows asked for do not exist (a fresh, migrated database): what is measured is the statement's
own cost, not its rows'. Each figure is the median of `--runs` rounds of `--transactions`
transactions, after a warm-up; the variants interleave round by round, on a fresh database
of `--pg-url`'s server (dropped at the end). PostgreSQL only: SQLite's statements run in
the process and take another path (db/engine.py's writer thread).

    .venv/bin/python bench/statements.py [--quick] [--runs 7] [--transactions 300]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--json]

`--quick`: 3 rounds of 100 transactions (a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from _scale import DEFAULT_PG_URL, loopback_only
from accept import create_pg_database, drop_pg_database, plain_pg_url
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.lists import in_list
from amnex.db.migrate import upgrade_database
from amnex.messages.models import Message

SQL = "SELECT id, status FROM messages WHERE id = ANY($1::VARCHAR[])"
IDS = [f"msg_{i:026d}" for i in range(15)]
Work = Callable[[AsyncSession], Awaitable[None]]


async def orm(session: AsyncSession) -> None:
    query = select(Message.id, Message.status).where(in_list(session, Message.id, IDS))
    (await session.execute(query)).all()


async def core(session: AsyncSession) -> None:
    connection = await session.connection()
    (await connection.exec_driver_sql(SQL, (IDS,))).all()


async def driver(session: AsyncSession) -> None:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    if adapted._transaction is None:  # what the adapter's cursor does before a statement
        await adapted._start_transaction()
    await raw.driver_connection.fetch(SQL, IDS)  # type: ignore[union-attr]


def times(read: Work, n: int) -> Work:
    async def work(session: AsyncSession) -> None:
        for _ in range(n):
            await read(session)

    return work


async def measure(database_url: str, runs: int, transactions: int) -> dict[str, list[float]]:
    """CPU µs per transaction, one list per (variant, statements) over the rounds."""
    db = Database(Settings(database_url=database_url))
    variants = {
        f"{name} x{n}": times(read, n)
        for name, read in (("orm", orm), ("core", core), ("driver", driver))
        for n in (1, 2)
    }
    out: dict[str, list[float]] = {name: [] for name in variants}
    try:
        await upgrade_database(db)
        for work in variants.values():
            for _ in range(50):
                await db.write(work)
        for _ in range(runs):
            for name, work in variants.items():
                start = time.process_time()
                for _ in range(transactions):
                    await db.write(work)
                out[name].append((time.process_time() - start) / transactions * 1e6)
    finally:
        await db.dispose()
    return out


def table(results: dict[str, list[float]]) -> tuple[str, list[dict[str, Any]]]:
    median = {name: statistics.median(values) for name, values in results.items()}
    orm_extra = median["orm x2"] - median["orm x1"]
    lines = [
        "| reads issued through | µs per transaction, 1 read | 2 reads | the second read | "
        "its ratio to the ORM's |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = []
    for name in ("orm", "core", "driver"):
        one, two = median[f"{name} x1"], median[f"{name} x2"]
        extra = two - one
        lines.append(
            f"| {name} | {one:,.0f} | {two:,.0f} | {extra:,.0f} | {extra / orm_extra:.2f} |"
        )
        rows.append(
            {
                "figure": f"one more read, {name}",
                "value": extra,
                "unit": "µs CPU",
                "baseline": "orm",
                "ratio": extra / orm_extra,
            }
        )
    return "\n".join(lines), rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 transactions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.transactions = 3, 100
    if not 1 <= args.runs <= 50 or not 1 <= args.transactions <= 10_000:
        parser.error("--runs 1..50, --transactions 1..10000")
    if not loopback_only(args.pg_url):
        parser.error("--pg-url must be a loopback address")
    name = f"amnex_bench_{secrets.token_hex(4)}"
    database_url = (
        make_url(plain_pg_url(args.pg_url))
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )
    asyncio.run(create_pg_database(args.pg_url, name))
    try:
        results = asyncio.run(measure(database_url, args.runs, args.transactions))
    finally:
        asyncio.run(drop_pg_database(args.pg_url, name))
    text, rows = table(results)
    print(
        f"One read in a worker's write transaction, CPU of this process, median of {args.runs} "
        f"rounds of {args.transactions:,} transactions:"
    )
    print(text)
    if args.json:
        print(json.dumps({"benchmark": "statements", "ok": True, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
