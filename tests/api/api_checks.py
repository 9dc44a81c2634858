"""Checks the API tests share: the problem+json shape of every error, and stored row counts."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from amnex.db.engine import Database
from amnex.messages.models import IdempotencyRecord, Message, MessageEvent

PROBLEM_JSON = "application/problem+json"

EMAIL = {
    "channel": "email",
    "to": "alex@example.com",
    "subject": "Your order",
    "body": "It ships today.",
}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 document with the given status and stable code; returns its body."""
    assert response.status_code == status, response.text
    # This module is not rewritten by pytest, so each assert names what it saw.
    content_type = response.headers["content-type"].split(";")[0]
    assert content_type == PROBLEM_JSON, content_type
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status, problem
    assert problem["code"] == code, problem
    assert isinstance(problem["title"], str), problem
    assert problem["title"], problem
    assert isinstance(problem["detail"], str), problem
    assert problem["detail"], problem
    return problem


def error_fields(problem: dict[str, Any]) -> list[str]:
    """The fields named in a `validation_failed` problem's `errors` list."""
    errors = problem.get("errors")
    assert isinstance(errors, list), problem
    return [e["field"] for e in errors]


async def stored_counts(db: Database) -> tuple[int, int, int]:
    """Rows in messages, message_events and idempotency_keys."""
    async with db.read_session() as session:
        counts = []
        for model in (Message, MessageEvent, IdempotencyRecord):
            value = await session.scalar(select(func.count()).select_from(model))
            counts.append(int(value or 0))
    return counts[0], counts[1], counts[2]


async def count_messages(db: Database, account_id: str | None = None) -> int:
    query = select(func.count()).select_from(Message)
    if account_id is not None:
        query = query.where(Message.account_id == account_id)
    async with db.read_session() as session:
        return int(await session.scalar(query) or 0)
