"""Channels: SMS — routes a message to an SMPP connector and submits it there.

Design note. The worker keeps one `SmppConnector` per enabled connector row, reloaded every
`route_cache_ttl_s`: a new connector is started, a changed one is restarted (gracefully
unbound), a removed or disabled one is closed. `send` asks the route table for the
message's connectors, in failover order, and submits through the first one that is bound;
a connector that is down (nothing was sent) passes the message to the next. Receipts and
inbound messages from every connector go to the worker's `DeliveryWriter`.

With bind leases (`carriers.leases`, what `amnex worker` runs) each connector binds only the
slots this worker holds, and follows the keeper as slots come and go. `can_attempt` tells the
dispatcher which messages this worker cannot send at all (no slot of any connector on their
route), so it leaves them to a worker that holds one; one claimed anyway (the slots moved
in between) is given back untried (`NotAttempted`, `no_bind_here`): due at once, with no
attempt counted. A worker that holds a slot whose bind is down (reconnecting) does try: it
waits for the bind and, failing that, the message is retried with backoff like any other
connection failure, since no other worker can open that slot meanwhile.

A connector whose password cannot be opened (no or the wrong master key) is not started,
and the log says why; its messages wait (`connection_unavailable`) rather than fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select

from amnex.carriers.leases import BindLeaseKeeper
from amnex.carriers.models import Connector
from amnex.carriers.routing import RouteCache
from amnex.carriers.service import connector_runtime_config
from amnex.channels.base import (
    NotAttempted,
    OutboundMessage,
    PermanentDeliveryError,
    SubmitResult,
    TemporaryDeliveryError,
)
from amnex.channels.smpp.config import SmppConnectorConfig
from amnex.channels.smpp.connector import SmppConnector
from amnex.channels.smpp.session import DeliverHandler
from amnex.db.engine import Database
from amnex.errors import AmnexError
from amnex.privacy.crypto import CryptoError, SecretBox
from amnex.receipts.dlr import ReceiptIdFormat

log = logging.getLogger(__name__)

ConnectorFactory = Callable[[SmppConnectorConfig, DeliverHandler], SmppConnector]
# How long a send waits for one of its route's connectors to bind (at start-up, after a
# reconnect) before the message is retried later instead.
BIND_WAIT_S = 5.0


def smpp_absolute_time(at: datetime | None) -> str:
    """SMPP 3.4 absolute time (YYMMDDhhmmsstnnp) in UTC, or "" for none."""
    if at is None:
        return ""
    return at.strftime("%y%m%d%H%M%S") + "000+"


class SmsChannel:
    name = "sms"

    def __init__(
        self,
        db: Database,
        *,
        routes: RouteCache,
        box: SecretBox,
        on_deliver: Callable[[str, ReceiptIdFormat], DeliverHandler],
        redis_url: str | None = None,
        reload_s: float = 2.0,
        factory: ConnectorFactory | None = None,
    ) -> None:
        self._db = db
        self._routes = routes
        self._box = box
        self._on_deliver = on_deliver
        self._redis_url = redis_url
        self._reload_s = reload_s
        self._factory = factory or self._default_factory
        self._connectors: dict[str, SmppConnector] = {}
        self._configs: dict[str, SmppConnectorConfig] = {}
        self._task: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        self._leases: BindLeaseKeeper | None = None
        self._follow_task: asyncio.Task[None] | None = None

    def follow_leases(self, leases: BindLeaseKeeper) -> None:
        """Bind only the slots `leases` holds (call before `start`)."""
        self._leases = leases

    def _default_factory(
        self, config: SmppConnectorConfig, handler: DeliverHandler
    ) -> SmppConnector:
        return SmppConnector(config, on_deliver=handler, redis_url=self._redis_url)

    @property
    def connectors(self) -> dict[str, SmppConnector]:
        return dict(self._connectors)

    def can_attempt(self, account_id: str, to_addr: str) -> bool:
        """False when this worker holds no bind slot of any connector on the message's route.

        Pure and cheap (the route table and the leases are in memory): the dispatcher asks it
        for every message it is about to claim.
        """
        leases = self._leases
        if leases is None:
            return True
        candidates = self._routes.current.connectors_for("sms", account_id, to_addr)
        # No route fails the same on every worker, at once (`send`): nothing to leave.
        return not candidates or any(self._holds_slot(leases, c) for c in candidates)

    def connectors_not_here(self) -> frozenset[str]:
        """Connectors whose messages (by the connector they were routed to at accept) the
        claim may leave out in SQL: another live worker holds slots of them, and this one
        holds none of any connector such a message may go to. A connector nobody holds is
        never left out, so its messages still reach `can_attempt` and `send`."""
        leases = self._leases
        if leases is None:
            return frozenset()
        routes = self._routes.current
        return frozenset(
            connector_id
            for connector_id in leases.held_elsewhere
            if not any(
                self._holds_slot(leases, c) for c in routes.connectors_behind("sms", connector_id)
            )
        )

    def _holds_slot(self, leases: BindLeaseKeeper, connector_id: str) -> bool:
        connector = self._connectors.get(connector_id)
        if connector is not None:
            return bool(connector.slots)
        # Not running here (its password does not open): a slot held is still this worker's
        # to try, so the message waits and gives up as with any connection failure.
        return bool(leases.held(connector_id))

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.create_task(self._sync_forever(), name="sms-connectors")
        if self._leases is not None:
            self._follow_task = asyncio.create_task(
                self._follow_leases(self._leases), name="sms-bind-leases"
            )

    async def _follow_leases(self, leases: BindLeaseKeeper) -> None:
        while True:
            seen = leases.version
            for connector_id, connector in list(self._connectors.items()):
                connector.set_slots(leases.held(connector_id))
            await leases.wait_changed(seen)

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reload_s)
            try:
                await self.sync()
            except Exception:
                log.exception("reloading SMS connectors failed; keeping the running ones")

    async def sync(self) -> None:
        """Bring the running connectors in line with the enabled connector rows."""
        async with self._sync_lock:
            async with self._db.read_session() as session:
                rows = list(await session.scalars(select(Connector).where(Connector.enabled)))
            wanted: dict[str, SmppConnectorConfig] = {}
            for row in rows:
                try:
                    wanted[row.id] = connector_runtime_config(self._box, row)
                except (CryptoError, AmnexError, ValueError) as exc:
                    log.error("connector %s (%s) not started: %s", row.id, row.name, exc)
            for connector_id in list(self._connectors):
                if self._configs.get(connector_id) != wanted.get(connector_id):
                    await self._stop(connector_id)
            for connector_id, config in wanted.items():
                if connector_id not in self._connectors:
                    handler = self._on_deliver(connector_id, config.receipt_id_format)
                    connector = self._factory(config, handler)
                    if self._leases is None:
                        await connector.start()
                    else:
                        await connector.start(self._leases.held(connector_id))
                    self._connectors[connector_id] = connector
                    self._configs[connector_id] = config
                    log.info("connector %s (%s) started", connector_id, config.name)

    async def _stop(self, connector_id: str) -> None:
        connector = self._connectors.pop(connector_id)
        self._configs.pop(connector_id, None)
        with contextlib.suppress(Exception):
            await connector.close()
        log.info("connector %s stopped", connector_id)

    async def send(self, message: OutboundMessage) -> SubmitResult:
        candidates = self._routes.current.connectors_for("sms", message.account_id, message.to_addr)
        if not candidates:
            raise PermanentDeliveryError("no_route", "no route for SMS to this destination")
        if not self.can_attempt(message.account_id, message.to_addr):
            raise NotAttempted(
                "no_bind_here", "this worker holds no bind of this message's connectors"
            )
        running = [self._connectors[c] for c in candidates if c in self._connectors]
        if self._leases is not None:
            running = [c for c in running if c.slots]
        if running and not any(c.is_up for c in running):
            await _first_up(running, BIND_WAIT_S)
        unavailable: TemporaryDeliveryError | None = None
        for connector_id in candidates:
            connector = self._connectors.get(connector_id)
            if connector is None or not connector.is_up:
                continue
            try:
                submitted = await connector.submit_text(
                    source=message.from_addr,
                    destination=message.to_addr,
                    text=message.body or "",
                    validity_period=smpp_absolute_time(message.expires_at),
                )
            except TemporaryDeliveryError as exc:
                if exc.code == "connection_unavailable":  # nothing was sent: try the next
                    unavailable = exc
                    continue
                raise
            return SubmitResult(
                status="sent",
                provider_message_id=submitted.provider_message_ids[0],
                detail={"connector_id": connector_id, "parts": submitted.segments},
                connector_id=connector_id,
                parts=submitted.provider_message_ids,
                segments=submitted.segments,
                encoding=submitted.encoding,
            )
        raise unavailable or TemporaryDeliveryError(
            "connection_unavailable",
            "no connector on this message's route is bound",
            retry_after_s=5.0,
        )

    async def close(self) -> None:
        for task in (self._follow_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._follow_task = None
        await asyncio.gather(*(self._stop(cid) for cid in list(self._connectors)))


async def _first_up(connectors: list[SmppConnector], timeout_s: float) -> None:
    waiters = [asyncio.ensure_future(c.wait_up(timeout_s)) for c in connectors]
    try:
        for finished in asyncio.as_completed(waiters):
            if await finished:
                return
    finally:
        for waiter in waiters:
            waiter.cancel()
