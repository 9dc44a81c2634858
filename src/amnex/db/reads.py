"""Storage: the workers' hot reads by a list of keys, compiled once and run as driver SQL.

Design note. The workers' write transactions (send outcomes, receipts) read and lock their
rows by lists of ids several times a second each. Through the ORM session each such read
builds its statement, computes its cache key, compiles or finds it, and builds ORM result
rows: bench/statements.py measured 550 to 720 µs of CPU for one more read in a transaction, and
290 to 330 µs for the same compiled text run through Core's `exec_driver_sql` on the session's
connection — which keeps SQLAlchemy's transaction, its error translation (a lost connection
is still a `DBAPIError` the writers retry) and its pool's handling of broken connections.

A `KeyedRead` is `SELECT columns FROM table WHERE key IN (values) [ORDER BY ...] [FOR
UPDATE]`, compiled once per dialect. On PostgreSQL it runs as driver SQL with the values as
one array (`key = ANY($1)`, as `db.lists.in_list` writes it), and each value read back goes
through its column type's own result processor (UTC timestamps come back timezone-aware),
so callers get what the ORM would have given them. SQLite keeps the session (`IN (...)`,
expanded per call): its statements run in-process on the writer thread, where the ORM's
share is smaller and this path is not the bottleneck.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql import Select

Column = InstrumentedAttribute[Any]


@dataclass(frozen=True, slots=True)
class _Driver:
    sql: str
    # The values' converter (the array's bind processor), if any.
    bind: Callable[[Any], Any] | None
    # (position, processor) of the columns whose values need converting on the way out.
    results: tuple[tuple[int, Callable[[Any], Any]], ...]


class KeyedRead:
    """`SELECT columns WHERE key IN values`, compiled once per dialect (see the note above).

    Rows come back as named tuples: `row.id`, `row.status`, or unpacked in column order.
    """

    def __init__(
        self,
        columns: Sequence[Column],
        *,
        key: Column,
        order_by: Sequence[Column] = (),
        for_update: bool = False,
    ) -> None:
        self._columns = tuple(columns)
        self._key = key
        self._order_by = tuple(order_by)
        self._for_update = for_update
        # A row type made at run time from the columns (mypy checks only literal ones).
        row_type: Any = namedtuple
        self.Row: Any = row_type("Row", [c.key for c in self._columns])
        self._driver: dict[str, _Driver] = {}
        self._expanding: Select[Any] | None = None

    def _select(self, condition: Any) -> Select[Any]:
        statement = select(*self._columns).where(condition).order_by(*self._order_by)
        return statement.with_for_update() if self._for_update else statement

    def _compiled(self, dialect: Dialect) -> _Driver:
        found = self._driver.get(dialect.name)
        if found is None:
            values = bindparam("values", type_=ARRAY(self._key.type))
            compiled = self._select(self._key == any_(values)).compile(dialect=dialect)
            results = (
                (i, column.type._cached_result_processor(dialect, None))
                for i, column in enumerate(self._columns)
            )
            found = _Driver(
                sql=compiled.string,
                bind=values.type._cached_bind_processor(dialect),
                results=tuple((i, p) for i, p in results if p is not None),
            )
            self._driver[dialect.name] = found
        return found

    async def rows(self, session: AsyncSession, values: Sequence[Any]) -> list[Any]:
        """The rows whose key is one of `values`, in the transaction of `session`."""
        connection = await session.connection()
        dialect = connection.dialect
        if dialect.name != "postgresql":
            if self._expanding is None:
                self._expanding = self._select(self._key.in_(bindparam("values", expanding=True)))
            result = await session.execute(self._expanding, {"values": list(values)})
            return [self.Row(*row) for row in result]
        driver = self._compiled(dialect)
        array = list(values)
        result = await connection.exec_driver_sql(
            driver.sql, (driver.bind(array) if driver.bind else array,)
        )
        make, processors = self.Row._make, driver.results
        if not processors:
            return [make(row) for row in result]
        out = []
        for row in result:
            converted = list(row)
            for position, process in processors:
                converted[position] = process(converted[position])
            out.append(make(converted))
        return out
