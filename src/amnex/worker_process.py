"""Wiring: the `amnex worker` process — dispatcher, channels, wake-ups, signals.

Health. The worker's HTTP port (`worker_metrics_port`) serves `/metrics`, `/healthz` and
`/readyz` from a small WSGI server on its own thread, so a scrape never waits for the event
loop. Readiness is checked on the loop (`WorkerReadiness.check_once`, every second: a
`SELECT 1`, a Redis PING when configured, and the binds of the connectors whose leases this
worker holds) and published as one immutable snapshot under a lock; the server thread reads
the snapshot and judges the database's answer by its age, so a loop that stalls makes the
worker not ready instead of leaving the last good answer up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import prometheus_client
import redis.asyncio

from amnex.api.problems import PROBLEM_JSON, problem_body
from amnex.carriers.leases import BindLeaseKeeper, lease_owner_id
from amnex.carriers.routing import RouteCache
from amnex.channels.base import Channel
from amnex.channels.registry import build_channels
from amnex.channels.sms import SmsChannel
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import AUTOVACUUM_OFF_WARNING, Database, autovacuum_off
from amnex.db.statistics import analyze_forever
from amnex.dispatch.retry import RetryPolicy
from amnex.dispatch.wakeup import PgListener
from amnex.dispatch.worker import Dispatcher
from amnex.email.receiver import BounceReceiver
from amnex.health import (
    CHECK_TIMEOUT_S,
    NOT_READY_HEADERS,
    OK,
    check_database,
    check_redis,
    is_ready,
    not_ready_problem,
)
from amnex.messages.idempotency import purge_expired_idempotency_keys
from amnex.privacy.content import ContentKeyring, WrongMasterKey
from amnex.privacy.crypto import SecretBox
from amnex.privacy.keys import AddressKeyring, start_address_keys
from amnex.privacy.records import build_records, load_records_file
from amnex.privacy.requests import SYSTEM_ACTOR, process_open_requests
from amnex.privacy.retention import purge_once
from amnex.receipts.sweeper import sweep_forever
from amnex.receipts.writer import DeliveryWriter
from amnex.runtime import static_channels, tune_gc_for_serving
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


# -------------------------------------------------------------------------------------------
# Health: /healthz, /readyz and /metrics on the worker's own port

READY_CHECK_INTERVAL_S: Final = 1.0
# The database must have answered a check this recently for the worker to be ready.
READY_DATABASE_FRESH_S: Final = 5.0
_NOT_CHECKED: Final = "unavailable: not checked yet"


@dataclass(frozen=True, slots=True)
class _Checked:
    """One round of checks, as the loop left it for the server thread."""

    database_ok_at: float | None  # clock() of the last database answer
    database_error: str | None  # why the last database check failed; None if it answered
    redis: str | None  # None when no Redis is configured
    unbound: tuple[str, ...]  # connectors whose slots this worker holds, with no bind up


class WorkerReadiness:
    """What the worker's `/readyz` answers. `check_once` and `run_forever` run on the event
    loop; `report` may be called from any thread."""

    def __init__(
        self,
        db: Database,
        *,
        redis_url: str | None = None,
        interval_s: float = READY_CHECK_INTERVAL_S,
        database_fresh_s: float = READY_DATABASE_FRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._redis_url = redis_url
        self._redis: redis.asyncio.Redis | None = None
        self.interval_s = interval_s
        self.database_fresh_s = database_fresh_s
        self._clock = clock
        self._leases: BindLeaseKeeper | None = None
        self._sms: SmsChannel | None = None
        self._lock = threading.Lock()
        self._checked = _Checked(None, _NOT_CHECKED, _NOT_CHECKED if redis_url else None, ())

    def watch_binds(self, leases: BindLeaseKeeper | None, sms: SmsChannel | None) -> None:
        """Judge the binds of the connectors `leases` holds slots of, as `sms` runs them."""
        self._leases = leases
        self._sms = sms

    async def check_once(self) -> None:
        database_ok_at = self._checked.database_ok_at
        database_error: str | None = None
        database = await check_database(self._db)
        if database == OK:
            database_ok_at = self._clock()
        else:
            database_error = database
        redis_state: str | None = None
        if self._redis_url:
            redis_state = await check_redis(self._redis_client(self._redis_url).ping)
        checked = _Checked(database_ok_at, database_error, redis_state, self._unbound())
        with self._lock:
            self._checked = checked

    async def run_forever(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("readiness check failed; retried")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def report(self) -> tuple[bool, dict[str, str]]:
        """(ready, checks) as `/readyz` shows them: each check "ok" or why it is not."""
        with self._lock:
            checked = self._checked
        checks: dict[str, str] = {}
        age_s = None if checked.database_ok_at is None else self._clock() - checked.database_ok_at
        if checked.database_error is not None:
            checks["database"] = checked.database_error
        elif age_s is None or age_s > self.database_fresh_s:
            checks["database"] = f"unavailable: no answer for {self.database_fresh_s:g}s"
        else:
            checks["database"] = "ok"
        if checked.redis is not None:
            checks["redis"] = checked.redis
        checks["binds"] = "unbound: " + ", ".join(checked.unbound) if checked.unbound else "ok"
        return is_ready(checks), checks

    def _unbound(self) -> tuple[str, ...]:
        if self._leases is None:
            return ()  # no leases: nothing this worker must bind
        connectors = self._sms.connectors if self._sms is not None else {}
        unbound = []
        for connector_id, slots in self._leases.all_held.items():
            connector = connectors.get(connector_id)
            if slots and (connector is None or connector.bound_sessions == 0):
                unbound.append(connector_id)
        return tuple(sorted(unbound))

    def _redis_client(self, url: str) -> redis.asyncio.Redis:
        if self._redis is None:
            self._redis = redis.asyncio.Redis.from_url(
                url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
            )
        return self._redis


def health_app(readiness: WorkerReadiness | None) -> WSGIApplication:
    """`/healthz`, `/readyz` (the API's shapes), and the metrics page on every other path."""
    metrics = prometheus_client.make_wsgi_app()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            ready, checks = (False, {}) if readiness is None else readiness.report()
            if ready:
                return _json(start_response, "200 OK", {"status": "ok", "checks": checks})
            body = problem_body(instance=path, **not_ready_problem(checks))
            return _json(
                start_response,
                "503 Service Unavailable",
                body,
                content_type=PROBLEM_JSON,
                headers=list(NOT_READY_HEADERS.items()),
            )
        page: Iterable[bytes] = metrics(environ, start_response)
        return page

    return app


def _json(
    start_response: StartResponse,
    status: str,
    body: dict[str, Any],
    *,
    content_type: str = "application/json",
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body, separators=(",", ":")).encode()
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(data))), *(headers or [])],
    )
    return [data]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not logged."""


def start_metrics_server(
    settings: Settings, readiness: WorkerReadiness | None = None
) -> WSGIServer | None:
    """The worker's `/metrics`, `/healthz` and `/readyz`, on their own thread, when
    `worker_metrics_port` is set. Stop it with `shutdown()` then `server_close()`."""
    if settings.worker_metrics_port is None:
        return None
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(_ThreadingServer):
        address_family = family  # an IPv6 host needs AF_INET6

    server = make_server(host, port, health_app(readiness), Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    log.info(
        "worker metrics and health on http://%s:%d/ (metrics, healthz, readyz)",
        host,
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
        claim_coalesce_s=settings.claim_coalesce_s,
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
        if not db.is_sqlite:
            parts.chores.append(asyncio.create_task(analyze_forever(db), name="analyze"))
        return parts

    @property
    def sms(self) -> SmsChannel | None:
        sms = self.channels.get("sms")
        return sms if isinstance(sms, SmsChannel) else None

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
    if await autovacuum_off(db):
        log.warning(AUTOVACUUM_OFF_WARNING)
    readiness = WorkerReadiness(db, redis_url=settings.redis_url)
    metrics_server = start_metrics_server(settings, readiness)
    try:
        parts = await WorkerParts.start(settings, db)
    except WrongMasterKey as exc:
        await db.dispose()
        raise SystemExit(str(exc)) from None
    readiness.watch_binds(parts.bind_leases, parts.sms)
    readiness_task = asyncio.create_task(readiness.run_forever(), name="readiness")
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
    # Everything built so far lives as long as the process: out of the collector's way.
    tune_gc_for_serving()
    try:
        await dispatcher.run()
    finally:
        readiness_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readiness_task
        await readiness.close()
        if listener is not None:
            await listener.close()
        await parts.close()
        await db.dispose()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
