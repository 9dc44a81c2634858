"""API: backpressure — refuse new sends while the due queue, or one account's or one carrier
connector's part of it, is full.

Design note. The accept path must not count rows per request: at tens of thousands of
requests a second a COUNT each would become the database's main load. Each API process
instead samples the queue in the background every `backpressure_sample_s`, and
`POST /v1/messages` reads the last verdict (a flag and a set look-up) right after
authentication, before the body is read: a refused request costs its headers, nothing more,
so memory stays flat however hard clients push.

"Due" is what a worker's claim would take (`dispatch.claim`): `queued` or `scheduled` with
`next_attempt_at` passed. A sample is two statements over the (status, next_attempt_at) index:

1. Scalars in one round trip: the due depth, counted over the index range and stopped at
   `max_queue_depth + 1` (past that the answer is "full", and counting further would only
   make an overloaded database busier); the oldest due time, the first index entry of each
   status; pending webhook deliveries, stopped at `WEBHOOK_COUNT_CEILING`.
2. Only when the depth reaches `max_account_backlog` (below it no account can) and the queue is
   not full (then every send is refused anyway): the same capped range grouped by account,
   keeping only the accounts at or over the limit; likewise by connector (`connector_id`, the
   connector an SMS was routed to at accept) once the messages waiting — due, or `queued`
   for a later retry, which is where a carrier that is down leaves them — reach
   `max_connector_backlog` (a third capped count in the first statement, taken only when
   that limit is set).
   The range then holds every due row, so the counts are exact. These read table rows, not
   just the index (about 0.15 s for 60,000 due rows on SQLite), so together they run at most
   `GROUPING_DUTY` of the time: after groupings that took `d`, the next wait `d /
   GROUPING_DUTY`, and samples in between keep their verdicts.

An account over its limit is refused before the body is read (429 `account_backlog_full`); a
connector's backlog is known only once the message is routed, so an SMS to a connector over
its limit is refused right after (503 `connector_backlog_full`) — a carrier that is down or
slow stops taking new work for itself alone, and messages to other carriers still go.

A verdict is up to `backpressure_sample_s` old, so a burst can overshoot a limit by what one
process accepts in that time: the limits stop unbounded growth, they are not quotas. When
sampling fails (the database is away) the last verdict stands for `STALE_AFTER_SAMPLES`
intervals and is then dropped: refusing for ever on stale figures would be worse than the
accept path's own `database_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import and_, func, literal, or_, select

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.errors import AccountBacklogFull, ConnectorBacklogFull, QueueFull
from amnex.messages.models import Message
from amnex.messages.status import Status
from amnex.metrics import (
    BACKPRESSURE_ACCOUNTS,
    BACKPRESSURE_CONNECTORS,
    BACKPRESSURE_REFUSALS,
    QUEUE_DEPTH,
    QUEUE_OLDEST_DUE_AGE,
    QUEUE_SAMPLE_ERRORS,
    WEBHOOK_BACKLOG,
)
from amnex.webhooks.models import WebhookDelivery

log = logging.getLogger(__name__)

DUE_STATUSES: Final = (Status.QUEUED.value, Status.SCHEDULED.value)
# Where counting stops when `max_queue_depth` is 0 (no global limit, the gauge still wants
# a figure) and for pending webhooks: a sample never reads more index entries than this.
QUEUE_COUNT_CEILING: Final = 1_000_000
WEBHOOK_COUNT_CEILING: Final = 100_000
STALE_AFTER_SAMPLES: Final = 10
GROUPING_DUTY: Final = 0.1
_STALE_AFTER_MIN_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class QueueSample:
    """What one sample saw. Counts stop at their ceiling (`due` at `due_cap`)."""

    at: datetime
    due: int
    due_cap: int
    oldest_due_at: datetime | None
    webhook_pending: int
    accounts_over: frozenset[str]
    connectors_over: frozenset[str] = frozenset()

    @property
    def oldest_due_age_s(self) -> float:
        if self.oldest_due_at is None:
            return 0.0
        return max(0.0, (self.at - self.oldest_due_at).total_seconds())


class Backpressure:
    """The sampler and the verdict `POST /v1/messages` consults (`check`)."""

    def __init__(
        self,
        db: Database,
        *,
        max_queue_depth: int,
        max_account_backlog: int,
        sample_s: float,
        max_connector_backlog: int = 0,
    ) -> None:
        self._db = db
        self.max_queue_depth = max_queue_depth
        self.max_account_backlog = max_account_backlog
        self.max_connector_backlog = max_connector_backlog
        self.sample_s = sample_s
        self.retry_after_s = max(1, math.ceil(sample_s))
        self._stale_after_s = max(_STALE_AFTER_MIN_S, STALE_AFTER_SAMPLES * sample_s)
        # The verdict, replaced whole by each sample.
        self._queue_full = False
        self._accounts_over: frozenset[str] = frozenset()
        self._connectors_over: frozenset[str] = frozenset()
        # The last groupings (by account, by connector), and when (time.monotonic) the next
        # may run.
        self._grouped: frozenset[str] = frozenset()
        self._grouped_connectors: frozenset[str] = frozenset()
        self._next_grouping = 0.0
        self.last_sample: QueueSample | None = None
        self._last_ok: float | None = None
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> Backpressure:
        return cls(
            db,
            max_queue_depth=settings.max_queue_depth,
            max_account_backlog=settings.max_account_backlog,
            max_connector_backlog=settings.max_connector_backlog,
            sample_s=settings.backpressure_sample_s,
        )

    @property
    def due_cap(self) -> int:
        return self.max_queue_depth + 1 if self.max_queue_depth else QUEUE_COUNT_CEILING

    # -- the accept path -------------------------------------------------------------------------

    def check(self, account_id: str) -> None:
        """Raise QueueFull or AccountBacklogFull if the last sample says so; no I/O."""
        if self._queue_full:
            BACKPRESSURE_REFUSALS.labels(code=QueueFull.code).inc()
            raise QueueFull(
                f"{self.max_queue_depth} or more messages are waiting to be sent; "
                "nothing was stored",
                retry_after_s=self.retry_after_s,
            )
        if account_id in self._accounts_over:
            BACKPRESSURE_REFUSALS.labels(code=AccountBacklogFull.code).inc()
            raise AccountBacklogFull(
                f"this account has {self.max_account_backlog} or more messages waiting to be "
                "sent; nothing was stored",
                retry_after_s=self.retry_after_s,
            )

    def check_connector(self, connector_id: str | None) -> None:
        """Raise ConnectorBacklogFull if the last sample put this connector over its limit."""
        if connector_id is not None and connector_id in self._connectors_over:
            BACKPRESSURE_REFUSALS.labels(code=ConnectorBacklogFull.code).inc()
            raise ConnectorBacklogFull(
                f"{self.max_connector_backlog} or more messages are waiting for the carrier "
                "connection this message is routed to; nothing was stored",
                retry_after_s=self.retry_after_s,
            )

    # -- sampling ----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="amnex-backpressure-sampler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.sample_s)

    async def refresh(self, *, now: datetime | None = None) -> QueueSample | None:
        """Take a sample, update the verdict and the gauges; None if the database failed."""
        loop = asyncio.get_running_loop()
        try:
            sample = await self.sample(now or utc_now())
        except Exception as exc:  # the database is away: keep serving, say so once
            QUEUE_SAMPLE_ERRORS.inc()
            for gauge in (QUEUE_DEPTH, QUEUE_OLDEST_DUE_AGE, WEBHOOK_BACKLOG):
                gauge.set(math.nan)
            if not self._failing:
                self._failing = True
                log.warning("backpressure: cannot sample the queue: %s", type(exc).__name__)
            if self._last_ok is None or loop.time() - self._last_ok > self._stale_after_s:
                self._set_verdict(
                    queue_full=False, accounts_over=frozenset(), connectors_over=frozenset()
                )
            return None
        if self._failing:
            self._failing = False
            log.info("backpressure: sampling the queue again")
        self._last_ok = loop.time()
        self.last_sample = sample
        self._set_verdict(
            queue_full=bool(self.max_queue_depth) and sample.due >= self.max_queue_depth,
            accounts_over=sample.accounts_over,
            connectors_over=sample.connectors_over,
        )
        QUEUE_DEPTH.set(sample.due)
        QUEUE_OLDEST_DUE_AGE.set(sample.oldest_due_age_s)
        WEBHOOK_BACKLOG.set(sample.webhook_pending)
        return sample

    def _set_verdict(
        self,
        *,
        queue_full: bool,
        accounts_over: frozenset[str],
        connectors_over: frozenset[str],
    ) -> None:
        if queue_full != self._queue_full:
            log.warning(
                "backpressure: %s",
                "the due queue is full, refusing sends (queue_full)"
                if queue_full
                else "the due queue is below max_queue_depth again",
            )
        if connectors_over != self._connectors_over and connectors_over:
            log.warning(
                "backpressure: refusing SMS routed to %s (max_connector_backlog)",
                ", ".join(sorted(connectors_over)),
            )
        self._queue_full = queue_full
        self._accounts_over = accounts_over
        self._connectors_over = connectors_over
        BACKPRESSURE_ACCOUNTS.set(len(accounts_over))
        BACKPRESSURE_CONNECTORS.set(len(connectors_over))

    async def sample(self, now: datetime) -> QueueSample:
        """Read the figures (see the module docstring); writes nothing to the database."""
        cap = self.due_cap
        due = and_(Message.status.in_(DUE_STATUSES), Message.next_attempt_at <= now)
        depth = (
            select(func.count())
            .select_from(select(Message.next_attempt_at).where(due).limit(cap).subquery())
            .scalar_subquery()
        )
        oldest = [
            select(Message.next_attempt_at)
            .where(Message.status == status, Message.next_attempt_at <= now)
            .order_by(Message.next_attempt_at)
            .limit(1)
            .scalar_subquery()
            for status in DUE_STATUSES
        ]
        webhooks = (
            select(func.count())
            .select_from(
                select(WebhookDelivery.next_attempt_at)
                .where(WebhookDelivery.status == "pending")
                .limit(WEBHOOK_COUNT_CEILING)
                .subquery()
            )
            .scalar_subquery()
        )
        # A connector's backlog also holds what waits for a retry (a carrier that is down
        # sends its messages back to `queued` with a later `next_attempt_at`): not yet due,
        # still owed to that connector.
        waiting = or_(
            Message.status == Status.QUEUED.value,
            and_(Message.status == Status.SCHEDULED.value, Message.next_attempt_at <= now),
        )
        waiting_count = (
            select(func.count())
            .select_from(select(Message.next_attempt_at).where(waiting).limit(cap).subquery())
            .scalar_subquery()
            if self.max_connector_backlog
            else literal(0)
        )
        async with self._db.read_session() as session:
            row = (await session.execute(select(depth, webhooks, waiting_count, *oldest))).one()
            due_count = int(row[0] or 0)
            by_account = bool(self.max_account_backlog) and due_count >= self.max_account_backlog
            by_connector = (
                bool(self.max_connector_backlog) and int(row[2] or 0) >= self.max_connector_backlog
            )
            if not by_account:
                self._grouped = frozenset()  # below the limit no account can be over it
            if not by_connector:
                self._grouped_connectors = frozenset()
            full = bool(self.max_queue_depth) and due_count >= self.max_queue_depth
            # Queue full: every send is refused anyway, no grouping needed; otherwise group
            # at most GROUPING_DUTY of the time, and keep the last verdicts in between.
            if (
                (by_account or by_connector)
                and not full
                and time.monotonic() >= self._next_grouping
            ):
                started = time.monotonic()
                if by_account:
                    accounts = select(Message.account_id).where(due).limit(cap).subquery()
                    self._grouped = frozenset(
                        await session.scalars(
                            select(accounts.c.account_id)
                            .group_by(accounts.c.account_id)
                            .having(func.count() >= self.max_account_backlog)
                        )
                    )
                if by_connector:
                    connectors = (
                        select(Message.connector_id)
                        .where(waiting, Message.connector_id.is_not(None))
                        .limit(cap)
                        .subquery()
                    )
                    self._grouped_connectors = frozenset(
                        await session.scalars(
                            select(connectors.c.connector_id)
                            .group_by(connectors.c.connector_id)
                            .having(func.count() >= self.max_connector_backlog)
                        )
                    )
                ended = time.monotonic()
                self._next_grouping = ended + (ended - started) / GROUPING_DUTY
        times = [t for t in row[3:] if t is not None]
        return QueueSample(
            at=now,
            due=due_count,
            due_cap=cap,
            oldest_due_at=min(times) if times else None,
            webhook_pending=int(row[1] or 0),
            accounts_over=self._grouped,
            connectors_over=self._grouped_connectors,
        )
