"""Dispatch: the worker loop — claim due messages, send them concurrently, record outcomes.

Design note. The loop claims only as many messages as it has free send slots, so nothing
claimed waits in memory behind other work. It sleeps until woken: by the in-process accept
writer (`amnex dev`), by PostgreSQL `NOTIFY` (see `wakeup`), or by a poll timer
(`poll_interval_s`, at most 100 ms, for separate processes on SQLite and for scheduled and
retried messages whose time has come), and when a send finishes (its slot is free, and a
claim that came back short may have left rows it settled rather than took: expired,
stopped, deferred). A claim that came back short is followed by the next one no sooner than
`claim_coalesce_s` (100 ms) later, however often the loop is woken: every worker hears every
`NOTIFY` and every finished send frees a slot, and without that pause each would cost a
claim query per message, per worker. The pause sets how often a worker under steady load
claims, and so how often it writes (outcomes and receipts arrive in step with its claims):
at 150 SMS/s per worker, PostgreSQL, 2 workers on 2 cores (bench/soak.py at a fixed rate),
a worker used 0.41 cores with a 20 ms pause, 0.35 with 50 ms and 0.25 with 100 ms. What it
costs is latency: a message accepted while the worker pauses waits out the rest of the
pause, never more; one accepted when the worker has not claimed for that long is claimed at
once.

A channel that can tell which messages this worker cannot send at all (`AttemptFilter`: the
SMS channel, for routes whose connectors it holds no bind of) is asked at each claim, which
passes those messages over for a worker that can. One that says so only at send time
(`NotAttempted`) has its message given back untried, due at once and with no attempt counted,
and this worker leaves it alone for `NOT_ATTEMPTED_HOLD_S`, so it does not claim it straight
back while another worker can take it.

On stop (SIGTERM) the loop stops claiming, lets sends in flight finish for up to
`shutdown_grace_s`, then cancels what is left and gives those leases back, due at once. A
worker killed outright (SIGKILL) gives nothing back: its leases expire after `lease_s` and
another worker reclaims the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.channels.base import (
    Channel,
    DeliveryError,
    NotAttempted,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.dispatch import claim
from amnex.dispatch.outcomes import OutcomeWriter
from amnex.dispatch.retry import RetryPolicy, decide_retry
from amnex.messages.status import Status
from amnex.metrics import DISPATCH_OUTCOMES, MESSAGES_DELIVERED, count_batch
from amnex.privacy.logsafe import failure_summary

log = logging.getLogger(__name__)

# How long this worker leaves a message it gave back untried before it may claim it again.
NOT_ATTEMPTED_HOLD_S = 1.0


@runtime_checkable
class AttemptFilter(Protocol):
    """A channel that knows, before claiming, which messages this worker cannot send."""

    def can_attempt(self, account_id: str, to_addr: str) -> bool: ...

    def connectors_not_here(self) -> frozenset[str]: ...


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[-6:]}"


class Dispatcher:
    def __init__(
        self,
        db: Database,
        channels: Mapping[str, Channel],
        *,
        retry: RetryPolicy,
        batch_size: int,
        concurrency: int,
        lease_s: float,
        poll_interval_s: float,
        shutdown_grace_s: float,
        claim_coalesce_s: float,
        owner: str | None = None,
        receipt_wait_s: float = 172_800.0,
        receipt_grace_s: float = 600.0,
    ) -> None:
        self._db = db
        self._channels = channels
        self._retry = retry
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._shutdown_grace_s = shutdown_grace_s
        self._claim_coalesce_s = claim_coalesce_s
        self.owner = owner or worker_name()
        self._receipt_wait_s = receipt_wait_s
        self._receipt_grace_s = receipt_grace_s
        self._outcomes = OutcomeWriter(db, owner=self.owner)
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._slot_free = asyncio.Event()
        # Messages given back untried: id -> loop time until which this worker skips them.
        self._held_off: dict[str, float] = {}

    def wake(self, _count: int = 0) -> None:
        """New work may be due (called by the accept writer or a NOTIFY listener)."""
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(self) -> None:
        log.info("dispatcher %s started", self.owner)
        self._outcomes.start()
        heartbeat = asyncio.create_task(self._renew_leases(), name="lease-heartbeat")
        try:
            loop = asyncio.get_running_loop()
            next_claim_at = 0.0
            while not self._stopping.is_set():
                free = self._concurrency - len(self._inflight)
                if free <= 0:
                    await self._sleep()
                    continue
                pause_s = next_claim_at - loop.time()
                if pause_s > 0:
                    await self._pause(pause_s)
                    continue
                wanted = min(free, self._batch_size)
                claimed = await self._claim_and_start(wanted)
                if claimed == wanted:
                    continue  # more may be due right now
                next_claim_at = loop.time() + self._claim_coalesce_s
                await self._sleep()
        finally:
            await self._drain()
            await self._outcomes.close()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            log.info("dispatcher %s stopped", self.owner)

    async def _renew_leases(self) -> None:
        """Every third of a lease, extend the leases of the sends in flight.

        A send may wait for a carrier connection or a slow answer for longer than one lease;
        without renewal another worker would reclaim it and send it a second time.
        """
        while True:
            await asyncio.sleep(self._lease_s / 3)
            ids = list(self._inflight)
            if not ids:
                continue
            try:
                async with self._db.unit_of_work() as session:
                    await claim.extend_leases(
                        session,
                        owner=self.owner,
                        message_ids=ids,
                        lease_s=self._lease_s,
                        now=utc_now(),
                    )
            except Exception:
                log.exception("renewing leases failed; retrying at the next beat")

    async def _sleep(self) -> None:
        """Until woken (new work may be due), a slot frees, or the poll timer."""
        self._wakeup.clear()
        self._slot_free.clear()
        waiters = [
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(self._slot_free.wait()),
        ]
        try:
            await asyncio.wait(
                waiters, timeout=self._poll_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _pause(self, pause_s: float) -> None:
        """The rest of the pause between short claims; a stop ends it at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=pause_s)

    async def _claim_and_start(self, limit: int) -> int:
        owner, lease_s = self.owner, self._lease_s
        can_attempt = self._attempt_filter()
        skip_ids = self._held_off_ids()
        not_here = frozenset().union(
            *(
                c.connectors_not_here()
                for c in self._channels.values()
                if isinstance(c, AttemptFilter)
            )
        )

        async def work(session: AsyncSession) -> list[claim.ClaimedMessage]:
            return await claim.claim_due_messages(
                session,
                owner=owner,
                limit=limit,
                lease_s=lease_s,
                now=utc_now(),
                can_attempt=can_attempt,
                skip_ids=skip_ids,
                exclude_connectors=not_here,
            )

        started = time.perf_counter()
        try:
            batch = await self._db.write(work)
        except Exception:
            log.exception("claim failed; retrying after the poll interval")
            await asyncio.sleep(self._poll_interval_s)
            return 0
        if batch:
            count_batch("claim", len(batch), time.perf_counter() - started)
        for item in batch:
            task = asyncio.create_task(self._deliver(item), name=f"send-{item.outbound.id}")
            self._inflight[item.outbound.id] = task
            task.add_done_callback(self._done_callback(item.outbound.id))
        return len(batch)

    def _attempt_filter(self) -> claim.CanAttempt | None:
        """The claim's `can_attempt`, from the channels that can tell (None: all can send).

        Pure and in memory; on SQLite the claim calls it on the database writer's thread.
        """
        filters = {n: c for n, c in self._channels.items() if isinstance(c, AttemptFilter)}
        if not filters:
            return None

        def can_attempt(channel: str, account_id: str, to_addr: str) -> bool:
            check = filters.get(channel)
            return check is None or check.can_attempt(account_id, to_addr)

        return can_attempt

    def _held_off_ids(self) -> frozenset[str]:
        now = asyncio.get_running_loop().time()
        for message_id in [m for m, until in self._held_off.items() if until <= now]:
            del self._held_off[message_id]
        return frozenset(self._held_off)

    def _done_callback(self, message_id: str) -> Callable[[asyncio.Task[None]], None]:
        return lambda _task: self._done(message_id)

    def _done(self, message_id: str) -> None:
        self._inflight.pop(message_id, None)
        self._slot_free.set()

    async def _deliver(self, item: claim.ClaimedMessage) -> None:
        message = item.outbound
        # Each send is its own task, so this context is the send's alone: every log line
        # written for it (the channel's, the SMPP session's, the outcome's) names it.
        structlog.contextvars.bind_contextvars(message_id=message.id, account_id=message.account_id)
        channel = self._channels.get(message.channel)
        try:
            if channel is None:
                raise PermanentDeliveryError(
                    "no_route", f"no carrier connection for {message.channel}"
                )
            result = await channel.send(message)
        except NotAttempted as exc:
            await self._give_back(item, exc)
            return
        except DeliveryError as exc:
            await self._record_error(item, exc)
            return
        except Exception as exc:  # a channel bug must not lose the message: retry it
            log.error(
                "channel %s raised unexpectedly for %s: %s",
                message.channel,
                message.id,
                failure_summary(exc),
            )
            await self._record_error(
                item, TemporaryDeliveryError("internal_error", f"{type(exc).__name__}")
            )
            return
        await self._record(
            claim.record_submitted,
            message_id=message.id,
            status=Status(result.status),
            provider_message_id=result.provider_message_id,
            detail=result.detail,
            connector_id=result.connector_id,
            parts=result.parts,
            segments=result.segments,
            encoding=result.encoding,
            receipt_wait_s=self._receipt_wait_s if result.status == "sent" else None,
            receipt_grace_s=self._receipt_grace_s,
        )
        DISPATCH_OUTCOMES.labels(channel=message.channel, outcome=result.status).inc()
        if result.status == "delivered":
            MESSAGES_DELIVERED.labels(channel=message.channel).inc()

    async def _give_back(self, item: claim.ClaimedMessage, exc: NotAttempted) -> None:
        """Nothing was tried: the message goes back as it was, for a worker that can send it."""
        message = item.outbound
        # Before the write commits: from then on the message is due, and this worker's own
        # next claim must not take it straight back.
        loop = asyncio.get_running_loop()
        self._held_off[message.id] = loop.time() + NOT_ATTEMPTED_HOLD_S
        await self._record(claim.record_not_attempted, message_id=message.id, reason=exc.code)
        log.debug("message %s given back untried (%s)", message.id, exc.code)

    async def _record_error(self, item: claim.ClaimedMessage, exc: DeliveryError) -> None:
        message = item.outbound
        now = utc_now()
        if isinstance(exc, TemporaryDeliveryError):
            decision = decide_retry(
                self._retry,
                attempt=message.attempt,
                now=now,
                created_at=message.created_at,
                expires_at=item.expires_at,
                error_code=exc.code,
                retry_after_s=exc.retry_after_s,
            )
            if decision.retry_at is not None:
                await self._record(
                    claim.record_retry,
                    message_id=message.id,
                    code=exc.code,
                    text=exc.message,
                    raw_code=exc.raw_code,
                    retry_at=decision.retry_at,
                )
                DISPATCH_OUTCOMES.labels(channel=message.channel, outcome="retry").inc()
                return
            code = decision.give_up_code or exc.code
            text = (
                "the validity period ended while retrying: " + exc.message
                if code == "expired"
                else "gave up after retrying: " + exc.message
            )
        else:
            code, text = exc.code, exc.message
        await self._record(
            claim.record_failed,
            message_id=message.id,
            code=code,
            text=text,
            raw_code=exc.raw_code,
            detail=exc.detail or None,
        )
        DISPATCH_OUTCOMES.labels(channel=message.channel, outcome="failed").inc()

    async def _record(self, recorder: claim.Recorder, **kwargs: object) -> None:
        """Write an outcome in the next group commit; waits until it is durable."""
        await self._outcomes.record(recorder, **kwargs)

    async def _drain(self) -> None:
        if not self._inflight:
            return
        tasks = list(self._inflight.values())
        _, pending = await asyncio.wait(tasks, timeout=self._shutdown_grace_s)
        if not pending:
            return
        ids = [mid for mid, task in self._inflight.items() if task in pending]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Outcomes those sends already queued are written first: a lease released before
        # its outcome is recorded would send the message again.
        await self._outcomes.close()
        with contextlib.suppress(Exception):
            async with self._db.unit_of_work() as session:
                released = await claim.release_leases(
                    session, owner=self.owner, message_ids=ids, now=utc_now()
                )
            log.info("released %d leases at shutdown", released)
