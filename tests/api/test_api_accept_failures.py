"""A database that is briefly unavailable, or that refuses a row: a retry or a precise 503 for
that request, never a 500 for the others and never a half-written message."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from api_checks import EMAIL, assert_problem, stored_counts
from sqlalchemy.engine import make_url

from amnex.accounts.service import hash_secret, load_key_context
from amnex.carriers.routing import RouteTable
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.schemas import SendMessageRequest
from amnex.messages.service import PreparedMessage, prepare_message
from support import AccountHandle, serve_api

EMAIL_ONLY = RouteTable(static_channels=frozenset({"email"}))

# Statements give up on a held lock after 0.1 s, so the accept writer's own retries (and its
# deadline, `accept_db_retry_s`) decide the outcome rather than SQLite's busy wait.
QUICK_BUSY = {"sqlite_busy_timeout_ms": 100}


@pytest.fixture
def sqlite_file(settings: Settings) -> Path:
    if not settings.is_sqlite:
        pytest.skip("holds SQLite's write lock from a second connection; SQLite only")
    database = make_url(settings.database_url).database
    assert database is not None
    return Path(database)


@pytest.fixture
async def quick_db(settings: Settings, db: Database) -> AsyncIterator[Database]:
    """The suite's database through engines that wait at most 0.1 s for a lock (the `db`
    fixture still empties it afterwards)."""
    database = Database(settings.model_copy(update=QUICK_BUSY))
    try:
        yield database
    finally:
        await database.dispose()


@contextlib.asynccontextmanager
async def write_lock_held(path: Path) -> AsyncIterator[None]:
    """Another connection's transaction holding SQLite's single write lock until the block
    ends. Taken off the event loop: a transaction of the server's that holds the lock at
    that moment needs the loop to commit and let go."""
    other = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
    try:
        await asyncio.to_thread(other.execute, "BEGIN IMMEDIATE")
        yield
        await asyncio.to_thread(other.execute, "COMMIT")
    finally:
        other.close()


async def test_write_lock_held_briefly_delays_the_send_but_it_succeeds(
    settings: Settings, quick_db: Database, account: AccountHandle, sqlite_file: Path
) -> None:
    patient = settings.model_copy(update={**QUICK_BUSY, "accept_db_retry_s": 5.0})
    async with serve_api(patient, quick_db) as api:
        # Warm up: the key is resolved and cached before the lock is taken.
        assert (await api.client.get("/v1/messages", headers=account.headers)).status_code == 200
        async with write_lock_held(sqlite_file):
            started = time.monotonic()
            pending = asyncio.create_task(
                api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
            )
            await asyncio.sleep(0.5)
            assert not pending.done()
        response = await pending
        waited_s = time.monotonic() - started
    assert response.status_code == 201, response.text
    assert waited_s >= 0.5
    assert await stored_counts(quick_db) == (1, 1, 0)


async def test_write_lock_held_too_long_gives_503_and_stores_nothing(
    settings: Settings, quick_db: Database, account: AccountHandle, sqlite_file: Path
) -> None:
    impatient = settings.model_copy(update={**QUICK_BUSY, "accept_db_retry_s": 0.3})
    headers = {**account.headers, "Idempotency-Key": "retry-me"}
    async with serve_api(impatient, quick_db) as api:
        assert (await api.client.get("/v1/messages", headers=account.headers)).status_code == 200
        async with write_lock_held(sqlite_file):
            # Held for as long as the request takes (3 s at most), well past the 0.3 s deadline.
            response = await asyncio.wait_for(
                api.client.post("/v1/messages", headers=headers, json=EMAIL), timeout=3
            )
        problem = assert_problem(response, 503, "database_unavailable")
        assert "retry" in problem["detail"]
        assert int(response.headers["retry-after"]) >= 1
        assert await stored_counts(quick_db) == (0, 0, 0)

        # Once the lock is gone the client's retry, with the same key, is accepted.
        retried = await api.client.post("/v1/messages", headers=headers, json=EMAIL)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert await stored_counts(quick_db) == (1, 1, 1)


async def test_cancel_while_the_database_is_locked_is_503_not_500(
    settings: Settings, quick_db: Database, account: AccountHandle, sqlite_file: Path
) -> None:
    quick = settings.model_copy(update=QUICK_BUSY)
    async with serve_api(quick, quick_db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
        path = f"/v1/messages/{sent.json()['id']}"
        async with write_lock_held(sqlite_file):
            response = await api.client.delete(path, headers=account.headers)
        assert_problem(response, 503, "database_unavailable")
        assert "retry-after" in response.headers
        assert (await api.client.get(path, headers=account.headers)).json()["status"] == "queued"
        assert (await api.client.delete(path, headers=account.headers)).status_code == 200


async def prepared(db: Database, account: AccountHandle) -> PreparedMessage:
    async with db.read_session() as session:
        ctx = await load_key_context(session, hash_secret(account.api_key))
    assert ctx is not None
    request = SendMessageRequest.model_validate(EMAIL)
    return prepare_message(ctx, request, now=utc_now(), routes=EMAIL_ONLY)


async def test_row_the_database_refuses_fails_only_its_own_request(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    good = await prepared(db, account)
    bad = await prepared(db, account)
    bad.row["created_at"] = datetime(2030, 1, 1)  # noqa: DTZ001 - a naive time cannot be stored
    async with serve_api(settings, db) as api:
        # Both reach the writer together, so on SQLite they share one transaction.
        results = await asyncio.gather(
            api.runtime.writer.submit(good),
            api.runtime.writer.submit(bad),
            return_exceptions=True,
        )
        stored = await api.client.get(f"/v1/messages/{good.row['id']}", headers=account.headers)
        missing = await api.client.get(f"/v1/messages/{bad.row['id']}", headers=account.headers)
    assert results[0] is good  # stored as prepared
    assert isinstance(results[1], Exception)
    assert stored.status_code == 200
    assert_problem(missing, 404, "not_found")
    assert await stored_counts(db) == (1, 1, 0)
