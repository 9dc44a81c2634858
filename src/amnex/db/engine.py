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

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util.concurrency import await_

from amnex.config import Settings

# SQLSTATE classes of a server that is away or out of room, not of a bad statement:
# 08 connection exception, 53 insufficient resources ("too many clients", disk full),
# 57P operator intervention (shutting down, starting up).
TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P")


def is_transient_sqlstate(code: object) -> bool:
    return isinstance(code, str) and code.startswith(TRANSIENT_SQLSTATE_PREFIXES)


def is_transient_db_error(exc: DBAPIError) -> bool:
    """Connection-level failures, a server out of connections and lock timeouts are worth
    retrying; bad SQL is not."""
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    orig = exc.orig
    for cause in (orig, getattr(orig, "__cause__", None)):
        if is_transient_sqlstate(
            getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        ):
            return True
    text = str(exc.orig).lower()
    return any(
        word in text
        for word in ("connection", "database is locked", "shutting down", "terminat", "starting up")
    )


# A pooled PostgreSQL connection idle this long is pinged before it is used again.
PING_AFTER_IDLE_S = 5.0


def ping_after_idle(engine: AsyncEngine, idle_s: float) -> None:
    """Ping a pooled connection before use only when it sat idle `idle_s` or longer.

    SQLAlchemy's `pool_pre_ping` pings before every checkout: a round trip per transaction,
    6-8 % of a busy process's CPU and as many extra statements on the server. Under load a
    connection is checked out again within milliseconds, and a server that went away in
    between fails the statement with a disconnect error instead: SQLAlchemy then discards
    every connection of the pool, and the writers retry (`is_transient_db_error`), the API
    answers that one request `503 database_unavailable`. A connection left idle — where a
    restart, a failover or a firewall's idle timeout is met first — is still checked.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["amnex_idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("amnex_idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: this connection is not worth using
            # The pool discards this connection and checks out another (SQLAlchemy's
            # documented use of DisconnectionError in a checkout handler).
            raise DisconnectionError(str(exc)) from exc


AUTOVACUUM_OFF_WARNING = (
    "PostgreSQL runs with autovacuum off: messages and their parts are written several times "
    "each, and without vacuum their dead row versions pile up and every claim, receipt and "
    "sample reads more of them; turn autovacuum on (postgresql.conf) or vacuum them on a schedule"
)


async def autovacuum_off(db: Database) -> bool:
    """Whether the PostgreSQL server runs with autovacuum off (False on SQLite)."""
    if db.is_sqlite:
        return False
    async with db.read_session() as session:
        return str(await session.scalar(text("SHOW autovacuum"))).lower() == "off"


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


T = TypeVar("T")

# Polling for SQLite's write lock: first wait, and the longest wait between two tries.
WRITE_LOCK_FIRST_WAIT_S = 0.0002
WRITE_LOCK_MAX_WAIT_S = 0.002


def begin_immediate(
    execute: Callable[[str], object],
    *,
    timeout_s: float,
    busy_timeout_ms: int,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """`BEGIN IMMEDIATE` (take the write lock now), polling for it every few milliseconds.

    SQLite's own busy handler backs off to sleeps of up to 100 ms, so with two processes
    writing in turn (an API and a worker on one SQLite file) each would sleep far longer
    than the other holds the lock, and throughput collapses. Here the lock is asked for with
    the handler switched off and asked again after at most 2 ms, until `timeout_s`; the
    connection's busy timeout is back in force for the statements of the transaction.

    `sleep` must not block the event loop when this runs on it (SQLAlchemy's async engine
    runs its events there): another task of this process may hold the lock.
    """
    deadline = time.monotonic() + timeout_s
    wait_s = WRITE_LOCK_FIRST_WAIT_S
    execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                execute("BEGIN IMMEDIATE")
                return
            except (sqlite3.OperationalError, OperationalError) as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            sleep(wait_s)
            wait_s = min(wait_s * 2, WRITE_LOCK_MAX_WAIT_S)
    finally:
        execute(f"PRAGMA busy_timeout={busy_timeout_ms}")


def _sleep_on_the_loop(seconds: float) -> None:
    """Sleep from SQLAlchemy's sync-looking code without blocking the event loop."""
    await_(asyncio.sleep(seconds))


class _InlineSqliteConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the calling thread, not its own.

    For the writer thread only (`_SqliteWriter`): its event loop does nothing but run one
    transaction at a time, so a blocking `sqlite3` call there blocks nobody, and running it
    inline saves the two thread hops aiosqlite makes per call (its queue, then
    `call_soon_threadsafe` back), which cost more than most of the statements themselves.
    aiosqlite's own thread still opens the connection and serves the rare calls that
    SQLAlchemy queues to it directly (setting the isolation level), so the `sqlite3`
    connection is opened with `check_same_thread=False`; the two threads never use it at the
    same time, since each of those calls is awaited.
    """

    async def _execute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def _sqlite_engine(settings: Settings, *, immediate: bool, inline: bool = False) -> AsyncEngine:
    timeout_s = settings.sqlite_busy_timeout_ms / 1000
    if inline:
        database = make_url(settings.database_url).database or ":memory:"
        connector = functools.partial(
            sqlite3.connect, database, timeout=timeout_s, check_same_thread=False
        )

        async def _connect_inline() -> aiosqlite.Connection:
            connection = _InlineSqliteConnection(connector, iter_chunk_size=64)
            connection._thread.daemon = True
            return await connection

        engine = create_async_engine(
            "sqlite+aiosqlite://", async_creator=_connect_inline, hide_parameters=True
        )
    else:
        engine = create_async_engine(
            settings.database_url, connect_args={"timeout": timeout_s}, hide_parameters=True
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

    busy_timeout_s = settings.sqlite_busy_timeout_ms / 1000

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not immediate:
            conn.exec_driver_sql("BEGIN")
            return
        # On the driver's own cursor: a failed try must not touch SQLAlchemy's transaction.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            begin_immediate(
                cursor.execute,
                timeout_s=busy_timeout_s,
                busy_timeout_ms=busy_timeout_ms,
                sleep=_sleep_on_the_loop,
            )
        except sqlite3.OperationalError as exc:
            # Wrapped as SQLAlchemy wraps driver errors, so callers see one kind of error.
            raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        finally:
            cursor.close()

    busy_timeout_ms = int(settings.sqlite_busy_timeout_ms)

    return engine


class _SqliteWriter:
    """A thread with its own event loop and write engine, for the hot write paths on SQLite.

    Design note. On SQLite every statement is a hop to aiosqlite's thread and back through
    the event loop. On a busy loop (hundreds of sends in flight, SMPP traffic, HTTP) each
    hop waits for a whole loop iteration, so a transaction of ten statements held the one
    write lock for tens of milliseconds while doing almost nothing. Here the transaction
    runs on a loop that does nothing else: one hop from the caller's loop to this one and
    back, and fast hops inside. Transactions submitted here run one at a time, in order.
    """

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._settings = settings
        self._thread = threading.Thread(target=self._main, name="sqlite-writer", daemon=True)
        self._failed: BaseException | None = None
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def _main(self) -> None:
        try:
            asyncio.set_event_loop(self._loop)
            self._engine = _sqlite_engine(self._settings, immediate=True, inline=True)
            self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
            self._turn = asyncio.Lock()
        except BaseException as exc:
            self._failed = exc
            return
        finally:
            self._ready.set()
        self._loop.run_forever()

    async def _run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self._turn, self._sessions() as session, session.begin():
            return await work(session)

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        future = asyncio.run_coroutine_threadsafe(self._run(work), self._loop)
        return await asyncio.wrap_future(future)

    async def close(self) -> None:
        done = asyncio.run_coroutine_threadsafe(self._engine.dispose(), self._loop)
        await asyncio.wrap_future(done)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        if not self._thread.is_alive():
            self._loop.close()


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
                hide_parameters=True,
            )
            ping_after_idle(self.engine, PING_AFTER_IDLE_S)
            self.read_engine = self.engine
        self._writer = async_sessionmaker(self.engine, expire_on_commit=False)
        self._reader = async_sessionmaker(self.read_engine, expire_on_commit=False)
        # SQLite has one writer at a time. Within a process, writers queue here, in order,
        # instead of polling the file lock against each other (`begin_immediate` is for
        # other processes). Never held across a unit of work inside another.
        self.sqlite_write_gate: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self._sqlite_writer: _SqliteWriter | None = None

    async def write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work(session)` in one transaction and return its result.

        For the hot write paths (claims, send outcomes, receipts, sweeps). On SQLite the
        transaction runs on the writer thread's own event loop (see `_SqliteWriter`), so
        `work` must touch nothing bound to the caller's loop; on PostgreSQL it is a plain
        unit of work.
        """
        if not self.is_sqlite:
            async with self.unit_of_work() as session:
                return await work(session)
        if self._sqlite_writer is None:
            self._sqlite_writer = _SqliteWriter(self.settings)
        return await self._sqlite_writer.run(work)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commits when the block ends, rolls back if it raises."""
        if self.sqlite_write_gate is None:
            async with self._writer() as session, session.begin():
                yield session
            return
        async with self.sqlite_write_gate, self._writer() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only; it never commits."""
        async with self._reader() as session:
            yield session

    async def dispose(self) -> None:
        if self._sqlite_writer is not None:
            writer, self._sqlite_writer = self._sqlite_writer, None
            await writer.close()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
