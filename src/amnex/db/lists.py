"""Storage: "column is one of these values" as one statement whatever the number of values.

Design note. SQLAlchemy renders `column.in_(values)` with one placeholder per value, so each
length of the list is a different statement to PostgreSQL. The worker's transactions
(claims, send outcomes, receipts) select and lock rows by lists of ids whose length follows
the traffic, and SQLAlchemy's asyncpg adapter keeps 100 prepared statements per connection:
with a few such queries each seen at dozens of lengths, most executions prepared their
statement anew — a round trip, a parse and a plan — and SQLAlchemy rendered the placeholders
each time. On PostgreSQL `in_list` writes `column = ANY($1)` with the list as one array
parameter (`not_in_list`: `<> ALL($1)`), so each query is one prepared statement. SQLite
keeps `IN (...)`; it has no arrays, and its statements are prepared in-process.

Both forms mean the same for a list without NULLs, empty lists included (`= ANY('{}')` is
false, `<> ALL('{}')` true, as `IN ()` and `NOT IN ()` render them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, all_, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute


def _arrays(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _array(column: InstrumentedAttribute[Any], values: Iterable[Any]) -> Any:
    return bindparam(None, list(values), type_=ARRAY(column.type))


def in_list(
    session: AsyncSession, column: InstrumentedAttribute[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """`column IN (values)`, written as one statement shape on PostgreSQL (see above)."""
    if _arrays(session):
        return column == any_(_array(column, values))
    return column.in_(list(values))


def not_in_list(
    session: AsyncSession, column: InstrumentedAttribute[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """`column NOT IN (values)`, written as one statement shape on PostgreSQL (see above)."""
    if _arrays(session):
        return column != all_(_array(column, values))
    return column.not_in(list(values))
