"""Messages: the group-commit writer that makes acceptance durable and fast.

Design note. Each `POST /v1/messages` validates its message, hands the rows to this writer
and awaits a future. A writer task takes whatever has queued (up to `accept_batch_max`
messages), inserts it in one transaction and resolves every future after the commit: the
HTTP response is sent only once the message is on disk, but one fsync serves the whole batch
(`shared/notes/accept-path.md`). Under light load a batch is one message.

A batch that fails on a constraint (an Idempotency-Key raced by two requests) is retried one
message per transaction, so one bad row fails only its own request. A database that is briefly
unavailable is retried with backoff for `accept_db_retry_s`; after that the waiting requests
get `database_unavailable` (503 with Retry-After) — never a 500, never a half-written message.

The compliance gate finishes here: the writer reads the batch's recipients' opt-outs,
consents and earlier messages on the connection that stores it, just before the write
(`recipients.facts`; inside the transaction on SQLite, see `BulkInserter.insert_after`),
and each message is stored as the gate decides (`messages.service.apply_gate`) — or not at
all, its request answered with the rule's 422.

After each commit, `on_commit` is called with the number of messages written (the in-process
dispatcher's wake-up); on PostgreSQL the write also notifies `amnex_dispatch`, which PostgreSQL
delivers to listening workers only if the commit succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amnex.compliance.gate import RecipientFacts
from amnex.db.bulk import BatchConflict, Batches, BatchUnavailable, BulkInserter
from amnex.db.engine import Database
from amnex.db.models import Base
from amnex.errors import ComplianceRejected, DatabaseUnavailable, ServiceUnavailable
from amnex.messages.models import IdempotencyRecord, Message, MessageEvent
from amnex.messages.service import PreparedMessage, apply_gate
from amnex.privacy.content import ContentKeyUnavailable
from amnex.privacy.logsafe import failure_summary
from amnex.recipients.facts import facts_asyncpg, facts_sqlite

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "amnex_dispatch"

_KEYS = Base.metadata.tables[IdempotencyRecord.__tablename__]
_MESSAGES = Base.metadata.tables[Message.__tablename__]
_EVENTS = Base.metadata.tables[MessageEvent.__tablename__]

__all__ = ["NOTIFY_CHANNEL", "AcceptWriter", "DuplicateIdempotencyKey"]


class DuplicateIdempotencyKey(Exception):
    """Another request committed the same Idempotency-Key first; the caller looks it up."""


@dataclass(slots=True)
class _Pending:
    message: PreparedMessage
    idempotency: dict[str, Any] | None
    future: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Set by the writer: the message as stored (the gate may defer it), or the gate's
    # rejection (then nothing of it is stored).
    stored: PreparedMessage = field(init=False)
    rejected: ComplianceRejected | None = None

    def __post_init__(self) -> None:
        self.stored = self.message


class AcceptWriter:
    """Batches accepted messages into few transactions. One per process (SQLite: one writer)."""

    def __init__(
        self,
        db: Database,
        *,
        writers: int,
        batch_max: int,
        db_retry_s: float,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        self._writers = writers
        self._batch_max = batch_max
        self._db_retry_s = db_retry_s
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._inserter = BulkInserter(db, [_KEYS, _MESSAGES, _EVENTS], notify=NOTIFY_CHANNEL)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"accept-writer-{i}")
            for i in range(self._writers)
        ]

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._inserter.close()

    async def submit(
        self, message: PreparedMessage, idempotency: dict[str, Any] | None = None
    ) -> PreparedMessage:
        """Return the message as stored, once committed. Raises ComplianceRejected (the
        compliance gate refused it), DuplicateIdempotencyKey, or 503s."""
        if self._closing:
            raise ServiceUnavailable("shutting down; retry on another instance", retry_after_s=1)
        pending = _Pending(message, idempotency)
        self._queue.put_nowait(pending)
        await pending.future
        return pending.stored

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, batch: list[_Pending]) -> None:
        try:
            await self._insert_with_retry(batch)
        except BatchConflict:
            # One row broke a constraint: give every message its own transaction so only the
            # offending request fails.
            for pending in batch:
                await self._write_one(pending)
            return
        except DatabaseUnavailable as exc:
            for pending in batch:
                _settle(pending, exc)
            return
        except Exception as exc:
            if len(batch) > 1:
                # A row the database refuses (a value too wide for its column, say) must not
                # fail the other requests that shared its transaction.
                for pending in batch:
                    await self._write_one(pending)
                return
            log.error("accept batch failed: %s", failure_summary(exc))
            _settle(batch[0], exc)
            return
        stored = 0
        for pending in batch:
            _settle(pending, pending.rejected)
            stored += pending.rejected is None
        if self._on_commit is not None and stored:
            self._on_commit(stored)

    async def _write_one(self, pending: _Pending) -> None:
        try:
            await self._insert_with_retry([pending])
        except BatchConflict as exc:
            _settle(pending, DuplicateIdempotencyKey() if pending.idempotency else exc)
            return
        except DatabaseUnavailable as exc:
            _settle(pending, exc)
            return
        except Exception as exc:
            log.error("accepting a message failed: %s", failure_summary(exc))
            _settle(pending, exc)
            return
        _settle(pending, pending.rejected)
        if self._on_commit is not None and pending.rejected is None:
            self._on_commit(1)

    async def _insert_with_retry(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._db_retry_s
        delay_s = 0.05
        while True:
            try:
                await self._insert(batch)
                return
            except BatchUnavailable as exc:
                if loop.time() + delay_s > deadline:
                    log.warning("database unavailable for accept: %s", exc)
                    raise DatabaseUnavailable(
                        "the message was not stored; retry shortly", retry_after_s=2
                    ) from exc
                await asyncio.sleep(delay_s * (0.5 + random.random() / 2))
                delay_s = min(delay_s * 2, 0.5)

    async def _insert(self, batch: list[_Pending]) -> None:
        asks = [p.message.gate.facts for p in batch if p.message.gate is not None]

        def rows(facts: list[RecipientFacts]) -> Batches:
            found = iter(facts)
            kept: list[PreparedMessage] = []
            keys = []
            for pending in batch:
                pending.rejected = None
                if pending.message.gate is not None:
                    pending.stored, pending.rejected = apply_gate(pending.message, next(found))
                if pending.rejected is None:
                    kept.append(pending.stored)
                    if pending.idempotency is not None:
                        keys.append(pending.idempotency)
            return [
                (_KEYS, keys),
                (_MESSAGES, [m.row for m in kept]),
                (_EVENTS, [m.event for m in kept]),
            ]

        async def read_postgres(driver: Any) -> list[RecipientFacts]:
            return await facts_asyncpg(driver, asks)

        try:
            await self._inserter.insert_after(
                lambda conn: facts_sqlite(conn, asks), read_postgres, rows
            )
        except ContentKeyUnavailable as exc:
            # No content key loaded yet (the database was away at start): retry as an outage.
            raise BatchUnavailable(str(exc)) from None


def _settle(pending: _Pending, error: BaseException | None) -> None:
    if pending.future.done():
        return
    if error is None:
        pending.future.set_result(None)
    else:
        pending.future.set_exception(error)
