"""Wiring: the `amnex worker` process — dispatcher, channels, wake-ups, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import prometheus_client

from amnex.carriers.leases import BindLeaseKeeper, lease_owner_id
from amnex.carriers.routing import RouteCache
from amnex.channels.base import Channel
from amnex.channels.registry import build_channels
from amnex.channels.sms import SmsChannel
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.dispatch.retry import RetryPolicy
from amnex.dispatch.wakeup import PgListener
from amnex.dispatch.worker import Dispatcher
from amnex.email.receiver import BounceReceiver
from amnex.messages.idempotency import purge_expired_idempotency_keys
from amnex.privacy.content import ContentKeyring, WrongMasterKey
from amnex.privacy.crypto import SecretBox
from amnex.privacy.keys import AddressKeyring, start_address_keys
from amnex.privacy.records import build_records, load_records_file
from amnex.privacy.requests import SYSTEM_ACTOR, process_open_requests
from amnex.privacy.retention import purge_once
from amnex.receipts.sweeper import sweep_forever
from amnex.receipts.writer import DeliveryWriter
from amnex.runtime import static_channels
from amnex.webhooks.sender import WebhookSender

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 600.0


async def housekeeping(db: Database, *, interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
    """Periodic clean-up that every worker may run (each step is safe to run concurrently)."""
    while True:
        try:
            purged = await purge_expired_idempotency_keys(db, now=utc_now())
            if purged:
                log.info("purged %d expired idempotency keys", purged)
        except Exception:
            log.exception("housekeeping failed; retrying at the next interval")
        await asyncio.sleep(interval_s)


def start_metrics_server(settings: Settings) -> WSGIServer | None:
    """The worker's `/metrics`, on its own thread, when `worker_metrics_port` is set."""
    if settings.worker_metrics_port is None:
        return None
    server, _thread = prometheus_client.start_http_server(
        settings.worker_metrics_port, addr=settings.worker_metrics_host
    )
    log.info(
        "worker metrics on http://%s:%d/metrics",
        settings.worker_metrics_host,
        server.server_port,
    )
    return server


def build_dispatcher(
    settings: Settings, db: Database, channels: dict[str, Channel], *, poll_interval_s: float
) -> Dispatcher:
    return Dispatcher(
        db,
        channels,
        retry=RetryPolicy(
            base_s=settings.retry_base_s,
            max_s=settings.retry_max_s,
            max_age_s=settings.max_retry_age_s,
        ),
        batch_size=settings.claim_batch_size,
        concurrency=settings.worker_concurrency,
        lease_s=settings.lease_s,
        poll_interval_s=poll_interval_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        receipt_wait_s=settings.receipt_wait_s,
        receipt_grace_s=settings.receipt_grace_s,
    )


async def start_content_keys(settings: Settings, db: Database) -> ContentKeyring | None:
    """The process's content keyring, when it has a master key to wrap keys with; without
    one, content is stored as it is (the privacy report says so)."""
    box = SecretBox.from_settings(settings)
    if not box.available:
        log.warning("no master key: message content is stored without encryption")
        return None
    return await ContentKeyring.start(db, box, period_s=settings.content_key_period_s)


async def purge_forever(db: Database, settings: Settings) -> None:
    """Every `purge_interval_s`: the purge (`privacy.retention`), then the subject requests
    still open — an erasure that waited for the subject's messages to finish completes here."""
    while True:
        await asyncio.sleep(settings.purge_interval_s)
        try:
            await purge_once(db, settings)
        except Exception as exc:
            log.warning("purge failed (%s); it resumes on the next run", type(exc).__name__)
        try:
            records_file = load_records_file(settings)  # a bad file must not stop the purge
            async with db.unit_of_work() as session:
                records = await build_records(session, settings, records_file)
                await process_open_requests(session, SYSTEM_ACTOR, records)
        except Exception as exc:
            log.warning("subject requests not processed (%s); retried", type(exc).__name__)


@dataclass
class WorkerParts:
    """Everything a worker runs besides the dispatcher loop; `amnex dev` runs the same."""

    routes: RouteCache
    deliveries: DeliveryWriter
    channels: dict[str, Channel]
    chores: list[asyncio.Task[None]] = field(default_factory=list)
    # The SMTP server for bounces and complaints, when `bounce_listen_port` is set.
    bounce_receiver: BounceReceiver | None = None
    content_keys: ContentKeyring | None = None
    address_keys: AddressKeyring | None = None
    webhooks: WebhookSender | None = None
    # This worker's share of the connectors' bind slots (`carriers.leases`).
    bind_leases: BindLeaseKeeper | None = None

    @classmethod
    async def start(cls, settings: Settings, db: Database) -> WorkerParts:
        address_keys = await start_address_keys(db, SecretBox.from_settings(settings))
        content_keys = await start_content_keys(settings, db)
        routes = RouteCache(
            db, static_channels=static_channels(settings), ttl_s=settings.route_cache_ttl_s
        )
        await routes.start()
        deliveries = DeliveryWriter(db)
        deliveries.start()
        bind_leases = BindLeaseKeeper(
            db,
            owner=lease_owner_id(),
            ttl_s=settings.bind_lease_ttl_s,
            renew_s=settings.bind_lease_renew_s,
        )
        await bind_leases.start()
        channels = build_channels(settings, db, routes=routes, deliveries=deliveries)
        sms = channels.get("sms")
        if isinstance(sms, SmsChannel):
            sms.follow_leases(bind_leases)
        for channel in channels.values():
            await channel.start()
        parts = cls(
            routes,
            deliveries,
            channels,
            content_keys=content_keys,
            address_keys=address_keys,
            bind_leases=bind_leases,
        )
        if settings.bounce_listen_port is not None:
            try:
                parts.bounce_receiver = BounceReceiver(settings, db)
                await parts.bounce_receiver.start()
            except BaseException:
                parts.bounce_receiver = None
                await parts.close()
                raise
        parts.webhooks = WebhookSender(db, settings, box=SecretBox.from_settings(settings))
        parts.chores = [
            asyncio.create_task(parts.webhooks.run_forever(), name="webhooks"),
            asyncio.create_task(housekeeping(db), name="housekeeping"),
            asyncio.create_task(sweep_forever(db, settings), name="receipt-sweep"),
            asyncio.create_task(purge_forever(db, settings), name="purge"),
        ]
        return parts

    async def close(self) -> None:
        if self.bounce_receiver is not None:
            # First, while the database is still there; a report not yet answered is resent.
            await self.bounce_receiver.stop()
        for chore in self.chores:
            chore.cancel()
        for chore in self.chores:
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        # Channels first: unbinding lets the sessions answer what they still hold.
        for channel in self.channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        if self.bind_leases is not None:
            # After unbinding: a worker that takes a slot never binds next to our open bind.
            await self.bind_leases.close()
        await self.deliveries.close()
        await self.routes.close()
        if self.content_keys is not None:
            await self.content_keys.close()
        if self.address_keys is not None:
            await self.address_keys.close()


async def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then finish or release in-flight work and exit."""
    from amnex.db.migrate import schema_is_current

    db = Database(settings)
    if not await schema_is_current(db):
        await db.dispose()
        raise SystemExit("the database schema is not current: run `amnex db upgrade` first")
    metrics_server = start_metrics_server(settings)
    try:
        parts = await WorkerParts.start(settings, db)
    except WrongMasterKey as exc:
        await db.dispose()
        raise SystemExit(str(exc)) from None
    listener: PgListener | None = None
    # With LISTEN/NOTIFY new messages wake the worker at once; the timer only finds scheduled
    # and retried messages whose time has come.
    poll_s = settings.poll_interval_s if db.is_sqlite else max(settings.poll_interval_s, 0.5)
    dispatcher = build_dispatcher(settings, db, parts.channels, poll_interval_s=poll_s)
    if not db.is_sqlite:
        listener = PgListener(settings.database_url, dispatcher.wake)
        await listener.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.stop)
    log.info("worker %s running; channels: %s", dispatcher.owner, ", ".join(parts.channels))
    try:
        await dispatcher.run()
    finally:
        if listener is not None:
            await listener.close()
        await parts.close()
        await db.dispose()
        if metrics_server is not None:
            metrics_server.shutdown()
