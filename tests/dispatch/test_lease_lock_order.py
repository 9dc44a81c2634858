"""Lease renewal and outcome recording lock the same message rows without deadlocking.

The dispatcher's heartbeat (`extend_leases`) and its outcome writer run in two transactions
at once over the messages in flight. They used to take the row locks in different orders
(the UPDATE in scan order, the writer in the order outcomes arrived) and PostgreSQL killed
one of them as a deadlock. On SQLite one writer at a time cannot deadlock: PostgreSQL only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from sqlalchemy import select, text, update

from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.dispatch import claim
from amnex.dispatch.outcomes import apply_outcomes
from amnex.messages.models import Message
from amnex.messages.status import Status
from support import AccountHandle, accept_emails, eventually

pytestmark = pytest.mark.postgres

OWNER = "worker-a"


async def accept_many(db: Database, account: AccountHandle, count: int) -> list[str]:
    return sorted(await accept_emails(db, account, *(f"r{n}@example.com" for n in range(count))))


async def claim_all(db: Database, count: int) -> None:
    async with db.unit_of_work() as session:
        taken = await claim.claim_due_messages(
            session, owner=OWNER, limit=count, lease_s=30, now=utc_now()
        )
    assert len(taken) == count


async def lock_waiters(db: Database) -> int:
    """Sessions of this database waiting for a row or transaction lock right now."""
    async with db.read_session() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(waiting or 0)


def submitted(message_id: str) -> tuple[claim.Recorder, dict[str, Any]]:
    return claim.record_submitted, {
        "message_id": message_id,
        "status": Status.DELIVERED,
        "provider_message_id": "p-" + message_id[-6:],
        "detail": {},
    }


def retried(message_id: str) -> tuple[claim.Recorder, dict[str, Any]]:
    return claim.record_retry, {
        "message_id": message_id,
        "code": "temporary_failure",
        "text": "try later",
        "raw_code": None,
        "retry_at": utc_now(),
    }


async def test_renewal_does_not_wait_for_a_row_the_outcome_writer_holds(
    db: Database, account: AccountHandle
) -> None:
    first, last = await accept_many(db, account, 2)
    await claim_all(db, 2)
    before = {m.id: m.lease_until for m in await leased(db)}

    # Given the outcome writer is in the middle of a group: it holds the lock of `last` and
    # is about to record `first` (a group of an accepted send and then a retry, say)
    async with db.unit_of_work() as writer:
        assert await apply_outcomes(writer, [submitted(last)], owner=OWNER, now=utc_now()) == [True]

        # When the heartbeat renews the leases of both meanwhile
        async def renew() -> int:
            async with db.unit_of_work() as session:
                return await claim.extend_leases(
                    session, owner=OWNER, message_ids=[last, first], lease_s=60, now=utc_now()
                )

        renewal = asyncio.create_task(renew())
        blocked = asyncio.create_task(eventually(lambda: lock_waiters(db), bool))
        try:
            done, _ = await asyncio.wait([renewal, blocked], return_when=asyncio.FIRST_COMPLETED)
        finally:
            blocked.cancel()

        # Then it renews the one it can lock and does not queue behind the writer's lock
        assert renewal in done, "the renewal waited for a row lock the outcome writer holds"
        assert renewal.result() == 1
        # And the writer then takes its second row without a deadlock
        assert await apply_outcomes(writer, [retried(first)], owner=OWNER, now=utc_now()) == [True]

    rows = {m.id: m for m in await all_messages(db, [first, last])}
    assert rows[last].status == "delivered"
    assert rows[first].status == "queued"
    assert before[first] is not None


async def leased(db: Database) -> list[Message]:
    async with db.read_session() as session:
        return list(await session.scalars(select(Message).where(Message.lease_owner == OWNER)))


async def all_messages(db: Database, ids: list[str]) -> list[Message]:
    async with db.read_session() as session:
        return list(await session.scalars(select(Message).where(Message.id.in_(ids))))


async def test_renewals_and_mixed_outcome_groups_on_the_same_rows_never_deadlock(
    db: Database, account: AccountHandle
) -> None:
    count, rounds = 24, 25
    ids = await accept_many(db, account, count)
    rng = random.Random(1234)
    for _ in range(rounds):
        # Given every message is in flight on this worker again
        async with db.unit_of_work() as session:
            await session.execute(
                update(Message)
                .where(Message.id.in_(ids))
                .values(
                    status=Status.SENDING.value,
                    lease_owner=OWNER,
                    lease_until=utc_now(),
                    next_attempt_at=utc_now(),
                )
            )
        # When heartbeats renew them in any order while groups of accepted sends and
        # retries, in the order they finished, record them
        order = rng.sample(ids, len(ids))
        groups = [order[i : i + 6] for i in range(0, count, 6)]
        jobs: list[Callable[[], Coroutine[Any, Any, object]]] = []
        for group in groups:
            outcomes = [submitted(m) if rng.random() < 0.5 else retried(m) for m in group]
            jobs.append(write_group(db, outcomes))
        for _ in range(4):
            jobs.append(renew_all(db, rng.sample(ids, len(ids))))
        rng.shuffle(jobs)

        # Then nothing fails (a deadlock would raise in one of them)
        await asyncio.wait_for(asyncio.gather(*(job() for job in jobs)), timeout=30)
        assert await leased(db) == []


def write_group(
    db: Database, outcomes: list[tuple[claim.Recorder, dict[str, Any]]]
) -> Callable[[], Coroutine[Any, Any, object]]:
    async def run() -> object:
        async with db.unit_of_work() as session:
            applied = await apply_outcomes(session, outcomes, owner=OWNER, now=utc_now())
        assert all(applied)
        return applied

    return run


def renew_all(db: Database, ids: list[str]) -> Callable[[], Coroutine[Any, Any, object]]:
    async def run() -> object:
        async with db.unit_of_work() as session:
            return await claim.extend_leases(
                session, owner=OWNER, message_ids=ids, lease_s=60, now=utc_now()
            )

    return run
