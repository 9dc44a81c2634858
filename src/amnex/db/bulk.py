"""Storage: multi-table batch inserts on the driver, for the accept path's group commit.

Design note. A batch of accepted messages is written as one transaction of a few
`executemany` calls. Going through SQLAlchemy's async session costs a thread hop or an
awaitable per statement and per transaction step, which dominates when one batch is a handful
of rows; here the whole transaction is one hop:

- SQLite: a dedicated `sqlite3` connection owned by one thread (`BEGIN IMMEDIATE`, the
  inserts, `COMMIT` in a single call to that thread), with the same pragmas as the engine.
- PostgreSQL: the asyncpg connection underneath SQLAlchemy's pool, and one statement for
  the whole batch: each table's rows go in as one array per column (`INSERT ... SELECT FROM
  unnest(...)`), the tables as data-modifying CTEs, and the statement ends with
  `pg_notify` (delivered only if it commits). One statement is one implicit transaction, so
  the batch is all written or none of it, with one round trip where BEGIN, an `executemany`
  per table, NOTIFY and COMMIT took five or six. When a batch is one or a few messages, as at
  a moderate rate, that takes about a third off the CPU an acceptance costs the API and
  PostgreSQL (bench/README.md).

Values are converted with each column type's own SQLAlchemy bind processor, so what this
writes reads back through the models exactly as if the ORM had written it.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Column, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.db.base import UTCDateTime
from amnex.db.engine import (
    Database,
    begin_immediate,
    is_transient_db_error,
    is_transient_sqlstate,
    sqlite_pragmas,
)

Batches = Sequence[tuple[Table, Sequence[dict[str, Any]]]]
R = TypeVar("R")


def _no_read_sqlite(_conn: sqlite3.Connection) -> None:
    return None


async def _no_read_postgres(_driver: Any) -> None:
    return None


class BatchConflict(Exception):
    """A row broke a constraint (unique key, foreign key); nothing of the batch was written."""


class BatchUnavailable(Exception):
    """The database could not be reached or was locked; nothing was written. Worth retrying."""


@dataclass(frozen=True, slots=True)
class _Statement:
    sql: str
    keys: tuple[str, ...]
    # (position, processor) for the columns whose values need converting (dates, JSON).
    conversions: tuple[tuple[int, Callable[[Any], Any]], ...]
    # PostgreSQL: the same INSERT taking one array per column, its placeholders numbered
    # from {0}, {1}... for the statement that combines several of them.
    unnest_sql: str = ""

    def parameters(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        keys, conversions = self.keys, self.conversions
        out = []
        for row in rows:
            values = [row[key] for key in keys]
            for position, convert in conversions:
                values[position] = convert(values[position])
            out.append(tuple(values))
        return out


_LAST_UTC_TEXT: tuple[datetime | None, str | None] = (None, None)


def _sqlite_utc_text(value: datetime | None) -> str | None:
    """What `UTCDateTime` and SQLite's DATETIME write, in one C call instead of two steps.

    A batch stamps most of its rows with the same `now`: the last conversion is kept (as
    one tuple, swapped whole, so threads never see half of it).
    """
    global _LAST_UTC_TEXT
    if value is None:
        return None
    last = _LAST_UTC_TEXT
    if value is last[0]:
        return last[1]
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column; use clock.utc_now()")
    text = (value.astimezone(UTC) if value.utcoffset() else value).replace(tzinfo=None)
    _LAST_UTC_TEXT = (value, text.isoformat(" ", "microseconds"))
    return _LAST_UTC_TEXT[1]


def _converter(column: Column[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """The function that turns a Python value into what the driver stores for `column`."""
    if dialect.name == "sqlite" and isinstance(column.type, UTCDateTime):
        return _sqlite_utc_text
    return cast(Callable[[Any], Any] | None, column.type._cached_bind_processor(dialect))


def _compile(
    table: Table, dialect: Dialect, keys: Sequence[str], *, unnest: bool = False
) -> _Statement:
    """An INSERT of exactly `keys` (absent columns take their database default, NULL);
    with `unnest` (PostgreSQL, the batch inserter) also its one-array-per-column form."""
    compiled = insert(table).inline().compile(dialect=dialect, column_keys=list(keys))
    order = tuple(compiled.positiontup or keys)
    processors = [_converter(table.c[k], dialect) for k in order]
    unnest_sql = ""
    if unnest:
        # Each array takes the cast SQLAlchemy gives the value ($1::VARCHAR, not the column's
        # VARCHAR(40), which would cut a value too long instead of refusing it).
        values = compiled.string.rsplit(" VALUES (", 1)[1].removesuffix(")")
        casts = [
            value.split("::", 1)[1] if "::" in value else table.c[k].type.compile(dialect)
            for value, k in zip(re.split(r", (?=\$\d)", values), order, strict=True)
        ]
        quote = dialect.identifier_preparer.quote
        columns = ", ".join(quote(k) for k in order)
        arrays = ", ".join(f"{{{i}}}::{cast}[]" for i, cast in enumerate(casts))
        # Names from the models and casts from SQLAlchemy's compiler, never from input.
        target = f"INSERT INTO {quote(table.name)} ({columns})"
        unnest_sql = f"{target} SELECT * FROM unnest({arrays})"  # noqa: S608
    return _Statement(
        sql=compiled.string,
        keys=order,
        conversions=tuple((i, p) for i, p in enumerate(processors) if p is not None),
        unnest_sql=unnest_sql,
    )


def _combined_sql(statements: Sequence[_Statement], notify: str | None) -> str:
    """One statement running every INSERT of `statements`, then `pg_notify` if asked.

    Data-modifying CTEs all run, to completion, whether or not the main query reads them;
    AFTER triggers and foreign-key checks fire once the whole statement is done, so a row
    may refer to one written by an earlier CTE.
    """
    parts: list[str] = []
    number = 1
    for statement in statements:
        width = len(statement.keys)
        placeholders = [f"${n}" for n in range(number, number + width)]
        parts.append(statement.unnest_sql.format(*placeholders))
        number += width
    if notify is None:
        *ctes, main = parts
    else:
        ctes, main = parts, f"SELECT pg_notify('{notify}', '')"
    if not ctes:
        return main
    return "WITH " + ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(ctes)) + " " + main


class BulkInserter:
    """Insert rows into several tables in one transaction; one instance per process."""

    def __init__(self, db: Database, tables: Sequence[Table], *, notify: str | None = None) -> None:
        self._db = db
        self._dialect = db.engine.dialect
        self._tables = {table.name: table for table in tables}
        self._statements: dict[tuple[str, tuple[str, ...]], _Statement] = {}
        self._combined: dict[tuple[str, ...], str] = {}
        self._notify = notify if not db.is_sqlite else None
        self._executor: ThreadPoolExecutor | None = None
        self._sqlite: sqlite3.Connection | None = None
        # Writers of this process take turns at the gate (see Database.sqlite_write_gate).
        self._gate = db.sqlite_write_gate or asyncio.Lock()
        if db.is_sqlite:
            # One thread owns the connection: sqlite3 objects must stay on their thread.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk-insert")

    async def insert(self, batches: Batches) -> None:
        """Write every (table, rows) pair in order, in one transaction, or nothing."""
        await self.insert_after(_no_read_sqlite, _no_read_postgres, lambda _: batches)

    async def insert_after(
        self,
        read_sqlite: Callable[[sqlite3.Connection], R],
        read_postgres: Callable[[Any], Awaitable[R]],
        make: Callable[[R], Batches],
    ) -> None:
        """Read, then write what `make` builds from the read: all of its rows or none.

        On SQLite the read runs on the writer's own connection and thread inside the
        transaction, after `BEGIN IMMEDIATE` has taken the write lock, so nothing can change
        what it read before the rows are written. `make` must be pure: on SQLite it runs on
        the writer's thread.

        On PostgreSQL `read_postgres` runs on the asyncpg connection just before the write
        statement, each of its queries in its own implicit transaction. Under READ
        COMMITTED (PostgreSQL's default, which Amnex uses) that is exactly what a read
        inside the write's transaction would see: every statement there takes a new
        snapshot too, and a plain read takes no lock.
        """
        if self._executor is not None:
            loop = asyncio.get_running_loop()
            async with self._gate:
                await loop.run_in_executor(
                    self._executor,
                    self._insert_sqlite,
                    lambda conn: self._work(make(read_sqlite(conn))),
                )
        else:
            await self._insert_postgres(read_postgres, make)

    def _work(self, batches: Batches) -> list[tuple[_Statement, list[tuple[Any, ...]]]]:
        work = []
        for table, rows in batches:
            # Rows are grouped by the columns they carry: normally all rows share them.
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                groups.setdefault(tuple(row), []).append(row)
            for keys, group in groups.items():
                statement = self._statement(table, keys)
                work.append((statement, statement.parameters(group)))
        return work

    def _statement(self, table: Table, keys: tuple[str, ...]) -> _Statement:
        """The compiled INSERT for these columns; rows of one batch share their keys."""
        statement = self._statements.get((table.name, keys))
        if statement is None:
            own = self._tables[table.name]
            statement = _compile(own, self._dialect, keys, unnest=not self._db.is_sqlite)
            self._statements[(table.name, keys)] = statement
        return statement

    def _combined_statement(self, statements: Sequence[_Statement]) -> str:
        shape = tuple(statement.sql for statement in statements)
        sql = self._combined.get(shape)
        if sql is None:
            sql = self._combined[shape] = _combined_sql(statements, self._notify)
        return sql

    def close(self) -> None:
        if self._executor is not None:
            self._executor.submit(self._close_sqlite).result()
            self._executor.shutdown(wait=True)
            self._executor = None

    def _connect_sqlite(self) -> sqlite3.Connection:
        path = make_url(self._db.url).database or ":memory:"
        settings = self._db.settings
        conn = sqlite3.connect(
            path,
            timeout=settings.sqlite_busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=True,
        )
        for pragma in sqlite_pragmas(settings):
            conn.execute(pragma)
        return conn

    def _insert_sqlite(
        self,
        prepare: Callable[[sqlite3.Connection], list[tuple[_Statement, list[tuple[Any, ...]]]]],
    ) -> None:
        if self._sqlite is None:
            self._sqlite = self._connect_sqlite()
        conn = self._sqlite
        settings = self._db.settings
        try:
            begin_immediate(
                conn.execute,
                timeout_s=settings.sqlite_busy_timeout_ms / 1000,
                busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            )
            for statement, params in prepare(conn):
                conn.executemany(statement.sql, params)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            raise BatchConflict(str(exc)) from None
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise BatchUnavailable(str(exc)) from None
        except BaseException:
            # Anything else (a value the driver cannot bind, say): leave no transaction open
            # on this long-lived connection, and let the writer isolate the bad row.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _close_sqlite(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    async def _insert_postgres(
        self, read: Callable[[Any], Awaitable[R]], make: Callable[[R], Batches]
    ) -> None:
        import asyncpg  # type: ignore[import-untyped]

        try:
            async with self._db.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                if driver is None:
                    raise BatchUnavailable("the pool gave a closed connection")
                work = self._work(make(await read(driver)))
                if work:
                    sql = self._combined_statement([statement for statement, _ in work])
                    await driver.execute(sql, *_columns(work))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise BatchConflict(type(exc).__name__) from None
        except asyncpg.PostgresError as exc:
            # Too many clients, shutting down, starting up: the server, not the batch.
            if is_transient_sqlstate(exc.sqlstate):
                raise BatchUnavailable(type(exc).__name__) from None
            raise
        except (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
        ) as exc:
            raise BatchUnavailable(type(exc).__name__) from None
        except DBAPIError as exc:
            # SQLAlchemy wraps a failed pool connect in its own DBAPIError.
            if is_transient_db_error(exc):
                raise BatchUnavailable(type(exc.orig).__name__) from None
            raise


def _columns(work: Sequence[tuple[_Statement, list[tuple[Any, ...]]]]) -> list[list[Any]]:
    """The arrays `_combined_sql`'s statement takes: each statement's rows, column by column."""
    arrays: list[list[Any]] = []
    for _statement, params in work:
        arrays.extend(list(column) for column in zip(*params, strict=True))
    return arrays


_DRIVER_STATEMENTS: dict[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], _Statement] = {}


def _compile_update(
    table: Table, dialect: Dialect, columns: Sequence[str], key: Sequence[str]
) -> _Statement:
    """An UPDATE of `columns` WHERE `key` matches, positional, with each value's converter."""
    statement = (
        update(table)
        .where(*(table.c[k] == bindparam("k_" + k) for k in key))
        .values({c: bindparam("v_" + c) for c in columns if c not in key})
    )
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    columns_of = [name[2:] for name in names]  # "v_status" -> "status", "k_id" -> "id"
    processors = [_converter(table.c[c], dialect) for c in columns_of]
    return _Statement(
        sql=compiled.string,
        keys=tuple(columns_of),
        conversions=tuple((i, p) for i, p in enumerate(processors) if p is not None),
    )


def _driver_statement(
    kind: str, table: Table, dialect: Dialect, columns: tuple[str, ...], key: tuple[str, ...]
) -> _Statement:
    cache_key = (kind, dialect.name, table.name, columns, key)
    statement = _DRIVER_STATEMENTS.get(cache_key)
    if statement is None:
        statement = (
            _compile(table, dialect, columns)
            if kind == "insert"
            else _compile_update(table, dialect, columns, key)
        )
        _DRIVER_STATEMENTS[cache_key] = statement
    return statement


async def _executemany(
    session: AsyncSession,
    kind: str,
    model: type[Any],
    rows: Sequence[dict[str, Any]],
    key: tuple[str, ...],
) -> None:
    table: Table = model.__table__
    connection = await session.connection()
    dialect = connection.dialect
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    for columns, group in groups.items():
        statement = _driver_statement(kind, table, dialect, columns, key)
        await connection.exec_driver_sql(statement.sql, statement.parameters(group))


async def update_rows(
    session: AsyncSession, model: type[Any], rows: Sequence[dict[str, Any]], *, key: Sequence[str]
) -> None:
    """UPDATE each row by `key`, in one driver executemany per set of columns.

    The hot write paths change hundreds of rows per transaction. A statement compiled once
    and handed to the driver with each value converted by its column's own converter costs
    a fraction of the ORM's bulk update, and of SQLAlchemy's per-row parameter handling.
    """
    await _executemany(session, "update", model, rows, tuple(key))


async def insert_rows(
    session: AsyncSession, model: type[Any], rows: Sequence[dict[str, Any]]
) -> None:
    """INSERT the rows in one driver executemany per set of columns (see `update_rows`)."""
    await _executemany(session, "insert", model, rows, ())
