"""Storage: which database errors mean "the server is away or full, retry" (503
`database_unavailable`, the accept path's retries) and which are bugs (500)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from amnex.config import Settings
from amnex.db import engine as engine_module
from amnex.db.engine import Database, is_transient_db_error, is_transient_sqlstate


class DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "message", "transient"),
    [
        ("53300", "sorry, too many clients already", True),
        ("53100", "could not extend file: No space left on device", True),
        ("57P01", "terminating connection due to administrator command", True),
        ("57P03", "the database system is starting up", True),
        ("08006", "connection failure", True),
        ("42601", "syntax error at or near", False),
        ("23505", "duplicate key value violates unique constraint", False),
        (None, "database is locked", True),
        (None, "no such table: messages", False),
    ],
)
def test_a_server_away_or_full_is_transient_and_a_bad_statement_is_not(
    sqlstate: str | None, message: str, transient: bool
) -> None:
    error = DBAPIError("SELECT 1", {}, DriverError(message, sqlstate))
    assert is_transient_db_error(error) is transient
    if sqlstate is not None:
        assert is_transient_sqlstate(sqlstate) is transient


# --- pooled connections the server dropped (PostgreSQL) -----------------------------------------


async def _pooled_backend_pid(db: Database) -> int:
    """The server pid of the connection the pool hands out next (the pool holds just one)."""
    async with db.engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(db: Database, pid: int) -> None:
    """The server drops that connection (as a restart or an idle timeout would)."""
    url = make_url(db.url).set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(url)  # not the pool's: that holds the one being dropped
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


@pytest.fixture
async def one_connection_db(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[float], Database]]:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("pings pooled PostgreSQL connections")
    made: list[Database] = []

    def make(idle_s: float) -> Database:
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", idle_s)
        db = Database(settings.model_copy(update={"database_pool_size": 1}))
        made.append(db)
        return db

    yield make
    for db in made:
        await db.dispose()


async def test_a_connection_dropped_while_idle_is_replaced_before_use(
    one_connection_db: Callable[[float], Database],
) -> None:
    # Given a pooled connection, idle past the ping threshold, that the server has dropped
    db = one_connection_db(0.0)
    pid = await _pooled_backend_pid(db)
    await _terminate(db, pid)

    # When it is used again, then the ping finds it dead and a fresh one serves the query
    async with db.read_session() as session:
        assert await session.scalar(text("SELECT 1")) == 1
    assert await _pooled_backend_pid(db) != pid


async def test_a_connection_dropped_while_busy_fails_once_as_transient_then_recovers(
    one_connection_db: Callable[[float], Database],
) -> None:
    # Given a connection used again within the idle threshold (no ping, as under load) that
    # the server dropped in between
    db = one_connection_db(3600.0)
    pid = await _pooled_backend_pid(db)
    await _terminate(db, pid)

    # When it is used: one transient error (what the writers retry and the API answers 503)
    with pytest.raises(DBAPIError) as raised:
        async with db.read_session() as session:
            await session.scalar(text("SELECT 1"))
    assert is_transient_db_error(raised.value)

    # Then the pool was discarded, and the next use gets a fresh connection
    async with db.read_session() as session:
        assert await session.scalar(text("SELECT 1")) == 1
