"""Storage: upgrades while processes run — migrations declare whether they are online, the
online ones change nothing the previous version relies on, a migration that is not online
waits for the workers to stop, and a migration never blocks writes behind a table lock."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from amnex.carriers.leases import BindLeaseWorker
from amnex.cli import app
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.migrate import (
    Migration,
    UnknownRevision,
    all_migrations,
    current_revision,
    live_workers,
    migrations_after,
    script_directory,
    upgrade_database,
    upgrade_refusal,
)

# What an online migration must not do to a table that existed before it: each of these
# breaks the previous version's queries or locks the table for a scan or a rewrite.
UNSAFE_ON_EXISTING_TABLES = [
    (r"\bDROP\s+TABLE\b", "drops a table"),
    (r"\bDROP\s+COLUMN\b", "drops a column"),
    (r"\bRENAME\b", "renames"),
    (r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b", "changes a column's type"),
    (r"\bSET\s+NOT\s+NULL\b", "makes a column NOT NULL (a full scan under lock)"),
    (r"\bCREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)", "builds an index without CONCURRENTLY"),
    (r"\bADD\s+CONSTRAINT\b", "adds a constraint (validated under lock)"),
]
ADD_NOT_NULL_WITHOUT_DEFAULT = re.compile(
    r"\bADD\s+COLUMN\b(?!.*\bDEFAULT\b).*\bNOT\s+NULL\b", re.S
)


@pytest.fixture
async def fresh_db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database of the suite's kind (a new PostgreSQL database, or a SQLite file)."""
    if not database_url.startswith("postgresql"):
        db = Database(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"))
        yield db
        await db.dispose()
        return
    url = make_url(database_url)
    admin_url = url.set(drivername="postgresql").render_as_string(False)
    name = f"amnex_test_upgrade_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db = Database(Settings(database_url=url.set(database=name).render_as_string(False)))
    try:
        yield db
    finally:
        await db.dispose()
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def test_every_migration_says_whether_it_is_online() -> None:
    for script in script_directory().walk_revisions():
        assert isinstance(getattr(script.module, "online", None), bool), (
            f"migration {script.revision} must declare `online: bool` (see db/migrate.py)"
        )
    migrations = all_migrations()
    assert [m.revision for m in migrations] == sorted(m.revision for m in migrations)
    assert all(m.title for m in migrations)


def test_the_pending_migrations_are_those_after_the_current_revision() -> None:
    every = all_migrations()
    assert migrations_after(None) == every
    assert migrations_after(every[-1].revision) == []
    assert migrations_after(every[0].revision, every[2].revision) == every[1:3]


def test_an_unknown_revision_is_named_not_a_traceback() -> None:
    newest = all_migrations()[-1].revision
    with pytest.raises(UnknownRevision, match="upgraded by a newer version"):
        migrations_after("9999")
    with pytest.raises(UnknownRevision, match="unknown revision 'nope'"):
        migrations_after(newest, "nope")
    assert migrations_after(newest, "heads") == []


def test_a_migration_that_is_not_online_waits_for_the_workers_to_stop() -> None:
    online = Migration(revision="0100", title="a new table", online=True)
    offline = Migration(revision="0101", title="a column dropped", online=False)

    assert upgrade_refusal([online], ["worker-a"]) is None
    assert upgrade_refusal([online, offline], []) is None
    refusal = upgrade_refusal([online, offline], ["worker-a", "worker-b"])
    assert refusal is not None
    assert "2 worker(s)" in refusal
    assert "0101 (a column dropped)" in refusal
    assert "API processes" in refusal
    assert "0100" not in refusal


async def test_live_workers_are_those_whose_presence_has_not_expired(
    fresh_db: Database,
) -> None:
    await upgrade_database(fresh_db, "0011")
    assert await live_workers(fresh_db, now=utc_now()) == []  # no presence table yet

    await upgrade_database(fresh_db)
    now = utc_now()
    async with fresh_db.unit_of_work() as session:
        session.add(BindLeaseWorker(owner="alive", expires_at=now + timedelta(seconds=30)))
        session.add(BindLeaseWorker(owner="gone", expires_at=now - timedelta(seconds=1)))
    assert await live_workers(fresh_db, now=now) == ["alive"]


def test_db_status_and_upgrade_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMNEX_CONFIG_FILE", raising=False)
    monkeypatch.setenv("AMNEX_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("db", "upgrade", "0010")
    status = run("db", "status")
    assert "revision: 0010" in status
    assert re.search(r"pending: 0011\s+online\s+Webhooks", status)
    assert re.search(r"pending: 0012\s+offline\s+Bind leases", status)
    assert "workers alive: 0" in status

    upgraded = run("db", "upgrade")
    assert re.search(r"applied 0011\s+online", upgraded)
    assert "pending: none" in run("db", "status")


async def test_online_migrations_leave_existing_tables_usable_by_the_previous_version(
    fresh_db: Database,
) -> None:
    # Given the SQL each online migration runs on PostgreSQL (SQLite recreates a table to
    # alter it, so its statements say nothing about locks)
    if fresh_db.engine.dialect.name != "postgresql":
        pytest.skip("the statements checked are PostgreSQL's")
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(fresh_db.engine.sync_engine, "before_cursor_execute", record)
    problems: list[str] = []
    previous: str | None = None
    for migration in all_migrations():
        if previous is not None:
            await upgrade_database(fresh_db, previous)
        existing = await _tables(fresh_db)
        statements.clear()
        await upgrade_database(fresh_db, migration.revision)
        previous = migration.revision
        if not migration.online:
            continue
        # Then none of them does to a table that existed before what the previous version
        # could not live with
        for statement in statements:
            touched = _tables_named(statement, existing)
            if not touched:
                continue
            for pattern, what in UNSAFE_ON_EXISTING_TABLES:
                if re.search(pattern, statement, re.I):
                    problems.append(f"{migration.revision} {what}: {statement.strip()[:120]}")
            if ADD_NOT_NULL_WITHOUT_DEFAULT.search(statement.upper()):
                problems.append(
                    f"{migration.revision} adds a NOT NULL column without a default: "
                    f"{statement.strip()[:120]}"
                )
    event.remove(fresh_db.engine.sync_engine, "before_cursor_execute", record)
    assert problems == []
    assert await current_revision(fresh_db) == all_migrations()[-1].revision


async def test_a_migration_behind_a_long_transaction_gives_way_and_is_tried_again(
    fresh_db: Database,
) -> None:
    # Given a database one migration behind, and a worker's transaction holding the lock
    # an INSERT into message_events takes (0011 adds a trigger to that table)
    if fresh_db.engine.dialect.name != "postgresql":
        pytest.skip("lock_timeout is PostgreSQL's")
    await upgrade_database(fresh_db, "0010")
    dsn = fresh_db.engine.url.set(drivername="postgresql").render_as_string(False)
    holder = await asyncpg.connect(dsn)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE message_events IN ROW EXCLUSIVE MODE")

        # When the upgrade runs while the lock stays held, every try gives way
        with pytest.raises(DBAPIError) as raised:
            await upgrade_database(
                fresh_db, "0011", lock_timeout_s=0.2, attempts=2, retry_pause_s=0.05
            )
        assert "lock timeout" in str(raised.value).lower()
        assert await current_revision(fresh_db) == "0010"

        # And when the transaction ends during the retries, the upgrade completes
        upgrade = asyncio.create_task(
            upgrade_database(fresh_db, "0011", lock_timeout_s=0.2, attempts=20, retry_pause_s=0.1)
        )
        await asyncio.sleep(0.5)
        assert not upgrade.done()
        await transaction.commit()
        await asyncio.wait_for(upgrade, timeout=10)
    finally:
        await holder.close()
    assert await current_revision(fresh_db) == "0011"


async def _tables(db: Database) -> set[str]:
    def names(connection: Connection) -> set[str]:
        return set(inspect(connection).get_table_names())

    async with db.engine.connect() as conn:
        return await conn.run_sync(names)


def _tables_named(statement: str, tables: set[str]) -> set[str]:
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", statement))
    return {t for t in tables if t in words and t != "alembic_version"}


def test_db_status_warns_when_postgresql_runs_without_autovacuum(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the suite's PostgreSQL server (CI's runs with autovacuum off, a production one on)
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL server setting")

    async def server_autovacuum() -> str:
        url = make_url(database_url).set(drivername="postgresql").render_as_string(False)
        conn = await asyncpg.connect(url)
        try:
            return str(await conn.fetchval("SHOW autovacuum"))
        finally:
            await conn.close()

    monkeypatch.delenv("AMNEX_CONFIG_FILE", raising=False)
    monkeypatch.setenv("AMNEX_DATABASE_URL", database_url)
    result = CliRunner().invoke(app, ["db", "status"], catch_exceptions=False)

    # Then `amnex db status` warns exactly when autovacuum is off, and says what to do
    assert result.exit_code == 0, result.output
    warned = "warning: PostgreSQL runs with autovacuum off" in result.output
    assert warned is (asyncio.run(server_autovacuum()) == "off")
    if warned:
        assert "turn autovacuum on" in result.output
