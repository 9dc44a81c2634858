"""Health: the readiness checks that the API's and the worker's `/readyz` share.

Each check answers "ok" or why it is not ("unavailable: OperationalError"), bounded by a
timeout so that a database or Redis that stops answering makes the process not ready instead
of holding the probe. Not ready is a 503 problem (`not_ready`) listing every check, with
`Retry-After: 1`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypedDict

from sqlalchemy import text

from amnex.db.engine import Database

OK: Final = "ok"
CHECK_TIMEOUT_S: Final = 2.0
NOT_READY_STATUS: Final = 503
NOT_READY_HEADERS: Final[Mapping[str, str]] = {"Retry-After": "1"}


async def check_database(db: Database, timeout_s: float = CHECK_TIMEOUT_S) -> str:
    """A `SELECT 1`: "ok", or "unavailable: <error type>"."""
    try:
        async with asyncio.timeout(timeout_s), db.read_session() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return OK


async def check_redis(
    ping: Callable[[], Awaitable[Any]], timeout_s: float = CHECK_TIMEOUT_S
) -> str:
    """A Redis PING (`ping` answers truthy when Redis did): "ok", or "unavailable"."""
    try:
        async with asyncio.timeout(timeout_s):
            answered = bool(await ping())
    except Exception:
        answered = False
    return OK if answered else "unavailable"


def is_ready(checks: Mapping[str, str]) -> bool:
    return all(state == OK for state in checks.values())


class NotReadyProblem(TypedDict):
    """The problem fields of a not-ready answer, to pass on to `problem_body` or
    `problem_response` with the request's `instance`."""

    code: str
    status: int
    title: str
    detail: str
    checks: dict[str, str]


def not_ready_problem(checks: dict[str, str]) -> NotReadyProblem:
    """What `/readyz` answers (with `NOT_READY_HEADERS`) when a check is not "ok"."""
    failing = ", ".join(f"{name}: {state}" for name, state in checks.items() if state != OK)
    return NotReadyProblem(
        code="not_ready",
        status=NOT_READY_STATUS,
        title="Not ready",
        detail=failing or "readiness is not checked in this process",
        checks=checks,
    )
