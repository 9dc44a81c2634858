"""Storage: engines and sessions for SQLite (WAL) and PostgreSQL, and the unit of work.

Design note. `unit_of_work()` is the only place that commits: services take a session and
never commit, so callers can combine them into one transaction. On SQLite a writing
transaction starts with `BEGIN IMMEDIATE`, taking the single write lock up front: a deferred
transaction that reads and then writes can fail at once with SQLITE_BUSY when another writer
got there first, whatever the busy timeout. Reads use a second engine with plain deferred
transactions, so in WAL mode they never wait for the writer. On PostgreSQL both are one engine.

Both engines hide statement parameters in errors and logs: a failed INSERT must never write
message content or addresses into a log line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from amnex.config import Settings


def is_transient_db_error(exc: DBAPIError) -> bool:
    """Connection-level failures and lock timeouts are worth retrying; bad SQL is not."""
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    text = str(exc.orig).lower()
    return any(
        word in text
        for word in ("connection", "database is locked", "shutting down", "terminat", "starting up")
    )


def sqlite_pragmas(settings: Settings) -> list[str]:
    """The pragmas every SQLite connection runs with (the engines' and the bulk writer's)."""
    return [
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={settings.sqlite_synchronous}",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}",
        # Deleted content is overwritten with zeros, not left in free pages (policy §5).
        "PRAGMA secure_delete=ON",
    ]


def _sqlite_engine(settings: Settings, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(
        settings.database_url,
        connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
        hide_parameters=True,
    )
    pragmas = sqlite_pragmas(settings)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred-only).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Both engines and their session factories, built once per process from Settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.is_sqlite = settings.is_sqlite
        if self.is_sqlite:
            database = make_url(self.url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(settings, immediate=True)
            self.read_engine = _sqlite_engine(settings, immediate=False)
        else:
            self.engine = create_async_engine(
                self.url,
                pool_size=settings.database_pool_size,
                max_overflow=settings.database_pool_size,
                pool_pre_ping=True,
                hide_parameters=True,
            )
            self.read_engine = self.engine
        self._writer = async_sessionmaker(self.engine, expire_on_commit=False)
        self._reader = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commits when the block ends, rolls back if it raises."""
        async with self._writer() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only; it never commits."""
        async with self._reader() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
