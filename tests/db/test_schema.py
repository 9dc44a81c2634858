"""Storage: migrations match the models on both databases; timestamps stay UTC; SQLite settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import StatementError

from amnex.config import Settings
from amnex.db.base import UTCDateTime
from amnex.db.engine import Database
from amnex.db.migrate import downgrade_database, schema_is_current, upgrade_database
from amnex.db.models import Base
from amnex.messages.models import Message
from amnex.privacy.audit import record_audit
from support import AccountHandle, serve_api


async def test_the_migrated_schema_matches_the_models(db: Database) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with db.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []
    assert await schema_is_current(db)


async def test_migrations_go_down_to_nothing_and_up_again(tmp_path: Path) -> None:
    db = Database(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"))
    try:
        await upgrade_database(db)
        await downgrade_database(db, "base")
        assert not await schema_is_current(db)
        async with db.engine.connect() as conn:
            tables = (
                await conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
            ).scalars()
            assert set(tables) <= {"alembic_version"}
        await upgrade_database(db)
        assert await schema_is_current(db)
    finally:
        await db.dispose()


async def test_timestamps_come_back_as_the_same_utc_instant(db: Database) -> None:
    at = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5)))
    async with db.unit_of_work() as session:
        entry = record_audit(session, actor="t", action="a", target_type="x", target_id="1")
        entry.at = at
    async with db.read_session() as session:
        from amnex.privacy.audit import AuditEntry

        stored = await session.get(AuditEntry, entry.id)
    assert stored is not None
    assert stored.at == at
    assert stored.at.tzinfo is not None
    assert stored.at.utcoffset() == timedelta(0)
    assert stored.at.astimezone(UTC) == at.astimezone(UTC)


async def test_a_naive_timestamp_is_refused(db: Database) -> None:
    async with db.unit_of_work() as session:
        entry = record_audit(session, actor="t", action="a", target_type="x", target_id="2")
        entry.at = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test
        with pytest.raises(StatementError, match="naive datetime"):
            await session.flush()
        await session.rollback()


async def test_sqlite_runs_in_wal_with_full_sync_and_secure_delete(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite settings")
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
        assert (await conn.execute(text("PRAGMA secure_delete"))).scalar() == 1
        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1


async def test_database_errors_never_carry_message_content(db: Database) -> None:
    from sqlalchemy.exc import IntegrityError

    secret = "one-time code 482913"
    async with db.engine.connect() as conn:
        with pytest.raises(IntegrityError) as caught:
            await conn.execute(
                text(
                    "INSERT INTO audit_log (id, chain, seq, at, actor_kind, action, target_type,"
                    " target_id, detail, prev_hash, hash)"
                    " VALUES (:id, 'c', 1, :at, 'k', :actor, 't', '1', '{}', 'p', 'h')"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                [{"id": "dup", "at": datetime(2026, 1, 1, tzinfo=UTC), "actor": secret}] * 2,
            )  # fmt: skip
    assert secret not in str(caught.value)


async def test_absent_json_is_stored_as_sql_null(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={"channel": "email", "to": "a@example.com", "subject": "s", "body": "b"},
        )
    assert response.status_code == 201
    async with db.read_session() as session:
        nulls = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.meta.is_(None), Message.provider_detail.is_(None))
        )
    assert nulls == 1


async def test_the_queue_tables_are_vacuumed_after_one_percent_of_their_rows_change(
    db: Database,
) -> None:
    if db.is_sqlite:
        pytest.skip("PostgreSQL storage parameters")
    async with db.read_session() as session:
        rows = await session.execute(
            text(
                "SELECT relname, reloptions FROM pg_class "
                "WHERE relname IN ('messages', 'message_parts') AND relkind = 'r'"
            )
        )
        options = {name: set(opts or ()) for name, opts in rows}
    for table in ("messages", "message_parts"):
        assert {
            "autovacuum_vacuum_scale_factor=0.01",
            "autovacuum_vacuum_threshold=1000",
            "autovacuum_analyze_scale_factor=0.01",
        } <= options[table], table
