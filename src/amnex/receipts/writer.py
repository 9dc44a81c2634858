"""Receipts: the `on_deliver` handler of every SMPP session — store first, then answer.

Design note. `deliver_sm` / `data_sm` from an SMSC are either delivery receipts or inbound
messages. Each one is queued here and the session's handler awaits the commit of the batch
that holds it; only then does the session send `deliver_sm_resp` (ESME_ROK). Batching is
what makes this affordable: one transaction carries every receipt that arrived while the
previous one was committing (group commit, as on the accept path).

Answers: ESME_ROK once stored; ESME_RINVDSTADR for an inbound message to a number no
account owns (nothing is kept; the carrier learns it went nowhere); ESME_RX_T_APPN (a
temporary error: the SMSC sends it again) when the database is away, so a receipt is never
acknowledged and lost. A receipt we cannot read at all (no id or no state) is acknowledged,
logged and counted: sending it again would not make it readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.channels.smpp.pdu import CommandStatus, DataSm, DeliverSm
from amnex.channels.smpp.session import DeliverHandler
from amnex.clock import utc_now
from amnex.db.engine import Database, is_transient_db_error
from amnex.metrics import INBOUND_MESSAGES, RECEIPTS, count_batch
from amnex.receipts.apply import (
    ReceivedInbound,
    ReceivedReceipt,
    apply_receipts,
    store_inbound,
)
from amnex.receipts.dlr import ReceiptIdFormat, ReceiptParseError
from amnex.receipts.inbound import (
    InboundParseError,
    fragment_from_pdu,
    is_receipt,
    receipt_from_pdu,
)

log = logging.getLogger(__name__)

BATCH_MAX = 500


@dataclass(slots=True)
class _Item:
    payload: ReceivedReceipt | ReceivedInbound
    done: asyncio.Future[CommandStatus] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class DeliveryWriter:
    """Stores what SMSCs deliver, in batches; `handler(connector_id)` is a session's on_deliver."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="delivery-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.done.done():
                item.done.set_result(CommandStatus.ESME_RX_T_APPN)

    def handler(self, connector_id: str, id_format: ReceiptIdFormat = "as_is") -> DeliverHandler:
        """The `on_deliver` of a connector's sessions."""

        def on_deliver(pdu: DeliverSm | DataSm) -> asyncio.Future[CommandStatus]:
            return self.submit(connector_id, pdu, id_format=id_format)

        return on_deliver

    def submit(
        self, connector_id: str, pdu: DeliverSm | DataSm, *, id_format: ReceiptIdFormat = "as_is"
    ) -> asyncio.Future[CommandStatus]:
        """Queue one deliver_sm/data_sm; the future gives the command_status to answer."""
        loop = asyncio.get_running_loop()
        payload: ReceivedReceipt | ReceivedInbound
        try:
            if is_receipt(pdu):
                payload = ReceivedReceipt.of(connector_id, receipt_from_pdu(pdu), id_format)
            else:
                payload = ReceivedInbound(connector_id, fragment_from_pdu(pdu))
        except ReceiptParseError:
            RECEIPTS.labels(outcome="unreadable").inc()
            log.warning("connector %s: unreadable delivery receipt acknowledged", connector_id)
            return _resolved(loop, CommandStatus.ESME_ROK)
        except InboundParseError:
            INBOUND_MESSAGES.labels(outcome="undecodable").inc()
            log.warning("connector %s: inbound message without a source refused", connector_id)
            return _resolved(loop, CommandStatus.ESME_RINVSRCADR)
        if self._task is None:
            return _resolved(loop, CommandStatus.ESME_RX_T_APPN)
        item = _Item(payload)
        self._queue.put_nowait(item)
        return item.done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            statuses = await self._store(batch)
            for item, status in zip(batch, statuses, strict=True):
                if not item.done.done():
                    item.done.set_result(status)

    async def _store(self, batch: list[_Item]) -> list[CommandStatus]:
        receipts = [i.payload for i in batch if isinstance(i.payload, ReceivedReceipt)]
        inbound = [i.payload for i in batch if isinstance(i.payload, ReceivedInbound)]

        async def work(session: AsyncSession) -> list[bool]:
            now = utc_now()
            if receipts:
                await apply_receipts(session, receipts, now=now)
            return await store_inbound(session, inbound, now=now) if inbound else []

        started = time.perf_counter()
        try:
            stored = await self._db.write(work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(batch) > 1 and not _is_outage(exc):
                # One item the database refuses must not fail the others: each on its own.
                return [(await self._store([item]))[0] for item in batch]
            log.exception(
                "storing %d receipts/inbound messages failed; the SMSC will resend", len(batch)
            )
            return [CommandStatus.ESME_RX_T_APPN] * len(batch)
        count_batch("receipt", len(batch), time.perf_counter() - started)
        outcome = iter(stored)
        return [
            CommandStatus.ESME_ROK
            if isinstance(item.payload, ReceivedReceipt) or next(outcome)
            else CommandStatus.ESME_RINVDSTADR
            for item in batch
        ]


def _resolved(
    loop: asyncio.AbstractEventLoop, status: CommandStatus
) -> asyncio.Future[CommandStatus]:
    future: asyncio.Future[CommandStatus] = loop.create_future()
    future.set_result(status)
    return future


def _is_outage(exc: BaseException) -> bool:
    """The database is away (worth the SMSC sending again), not refusing one item."""
    return isinstance(exc, OSError) or (isinstance(exc, DBAPIError) and is_transient_db_error(exc))
