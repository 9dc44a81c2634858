"""Wiring: `amnex dev` — API, worker and simulators in one process on SQLite.

Runs migrations, bootstraps the demo account (idempotent: credentials in `dev.json` are
reused while they are valid), starts the SMTP sink and the SMSC simulator, points the
`dev-smsc` connector and a platform-wide SMS route at the simulator, starts the API and a
worker (dispatcher, receipts, sweeps, the bounce receiver on a free loopback port) that the
accept writer wakes in-process, points the sink's bounces at that receiver, and writes
`<data-dir>/dev.json`. Connector passwords are sealed with `<data-dir>/master.key`, created
on first run, unless a master key is configured.

SIGTERM and SIGINT stop it as they stop `amnex worker`: the API stops taking requests, the
dispatcher stops claiming and lets sends in flight finish for `shutdown_grace_s` (then gives
their leases back), the channels unbind, the bind leases are released, the simulators close,
and the process exits 0. The handlers are in place before the first step of start-up: a signal
during start-up ends it after the step under way, and what has started closes the same way.
uvicorn's own signal handling is switched off for this (`DevServer`): it re-raises the signal
once the server has stopped, which would end the process before the worker's clean-up ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import select

from amnex.accounts import service as accounts
from amnex.accounts.models import Account, ApiKey, Operator
from amnex.api.app import create_app
from amnex.carriers import service as carriers
from amnex.carriers.models import Connector
from amnex.config import Settings, load_settings
from amnex.db.engine import Database
from amnex.db.migrate import upgrade_database
from amnex.dispatch.worker import Dispatcher
from amnex.privacy.crypto import SecretBox, ensure_key_file
from amnex.runtime import Runtime, tune_gc_for_serving
from amnex.simulators.smsc import SmscSimulator
from amnex.simulators.smtp_sink import SmtpSink
from amnex.worker_process import WorkerParts, build_dispatcher

log = logging.getLogger(__name__)

DEMO_MARKER = "dev_demo"
DEMO_EMAIL_SENDER = "notifications@demo.amnex.test"
DEMO_SMS_SENDER = "+15005550006"
DEMO_RATE_LIMIT_PER_S = 100_000
DEV_ACTOR = "dev:bootstrap"
DEV_CONNECTOR = "dev-smsc"
DEV_BOUNCE_DOMAIN = "bounces.amnex.localhost"


class DevServer(uvicorn.Server):
    """uvicorn without its signal handling: `run_dev` owns SIGTERM and SIGINT.

    uvicorn's `capture_signals` swaps in its own handlers while it serves and raises the
    captured signal again when it returns; under the default SIGTERM disposition that ends the
    process before `run_dev` has stopped the dispatcher and given its leases back.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    account_id: str
    api_key: str
    admin_token: str


async def bootstrap_demo(db: Database, previous: dict[str, Any]) -> DemoCredentials:
    """Create the demo account and operator once; reuse the credentials of `dev.json`."""
    async with db.unit_of_work() as session:
        account = next(
            (a for a in await session.scalars(select(Account)) if a.settings.get(DEMO_MARKER)),
            None,
        )
        api_key = previous.get("api_key")
        if account is None:
            account, _, api_key = await accounts.create_account(
                session,
                business_name="Amnex Demo",
                contact_name="Demo Contact",
                email="demo@demo.amnex.test",
                phone="+13125550100",
                country="US",
                settings={DEMO_MARKER: True, "rate_limit_per_s": DEMO_RATE_LIMIT_PER_S},
                actor=DEV_ACTOR,
            )
            await accounts.add_sender(
                session,
                account_id=account.id,
                channel="email",
                address=DEMO_EMAIL_SENDER,
                is_default=True,
                actor=DEV_ACTOR,
            )
            await accounts.add_sender(
                session,
                account_id=account.id,
                channel="sms",
                address=DEMO_SMS_SENDER,
                is_default=True,
                actor=DEV_ACTOR,
            )
        elif not await _key_is_live(session, account.id, api_key):
            _, api_key = await accounts.create_api_key(
                session,
                account_id=account.id,
                name="dev",
                scopes="send,read,manage",
                actor=DEV_ACTOR,
            )
        admin_token = previous.get("admin_token")
        operator = await session.scalar(select(Operator).where(Operator.name == "dev"))
        if operator is None:
            _, admin_token = await accounts.create_operator(
                session, name="dev", email=None, actor=DEV_ACTOR
            )
        elif not admin_token or operator.token_hash != accounts.hash_secret(admin_token):
            admin_token = accounts.new_secret(accounts.OPERATOR_TOKEN_PREFIX)
            operator.token_hash = accounts.hash_secret(admin_token)
        return DemoCredentials(account.id, str(api_key), str(admin_token))


async def _key_is_live(session: Any, account_id: str, api_key: str | None) -> bool:
    if not api_key:
        return False
    key = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == accounts.hash_secret(api_key))
    )
    return key is not None and key.account_id == account_id and key.revoked_at is None


def _read_previous(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, text: str) -> None:
    """Write credentials readable by their owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def curl_example(api_url: str, api_key: str, channel: str = "email") -> str:
    body = (
        '{"channel": "sms", "to": "+14155550100", "body": "Your code is 123456"}'
        if channel == "sms"
        else '{"channel": "email", "to": "someone@example.com", '
        '"subject": "Hello", "body": "Sent through Amnex"}'
    )
    return (
        f"curl -s {api_url}/v1/messages \\\n"
        f"  -H 'Authorization: Bearer {api_key}' \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d '{body}'"
    )


async def bootstrap_smsc_route(db: Database, box: SecretBox, sim: SmscSimulator) -> None:
    """Point the `dev-smsc` connector at this run's simulator; route all SMS to it."""
    async with db.unit_of_work() as session:
        connector = await session.scalar(select(Connector).where(Connector.name == DEV_CONNECTOR))
        config = {"host": sim.host, "port": sim.port, "system_id": sim.system_id, "binds": 1}
        if connector is None:
            connector = await carriers.create_connector(
                session,
                box,
                name=DEV_CONNECTOR,
                config=config,
                password=sim.password,
                actor=DEV_ACTOR,
            )
        else:
            connector = await carriers.update_connector(
                session, box, connector.id, config=config, password=sim.password, actor=DEV_ACTOR
            )
        routes = await carriers.list_routes(session)
        if not any(connector.id in route.connector_ids for route in routes):
            await carriers.create_route(
                session, channel="sms", connector_ids=[connector.id], actor=DEV_ACTOR
            )


def dev_settings(data_dir: Path, sink: SmtpSink) -> Settings:
    overrides: dict[str, Any] = {}
    if not os.environ.get("AMNEX_MASTER_KEY") and not os.environ.get("AMNEX_MASTER_KEY_FILE"):
        key_file = data_dir / "master.key"
        ensure_key_file(key_file)
        overrides["master_key_file"] = key_file
    return load_settings(
        dev_mode=True,
        # A receiver on this machine (a test, `python -m http.server`) may take webhooks.
        webhook_allow_loopback=True,
        # The demo account takes the bundled benchmarks' bursts (DESIGN.md: dev.json).
        max_account_backlog=1_000_000,
        max_connector_backlog=1_000_000,
        max_queue_depth=2_000_000,
        database_url=os.environ.get(
            "AMNEX_DATABASE_URL", f"sqlite+aiosqlite:///{(data_dir / 'amnex.db').resolve()}"
        ),
        smtp_host=sink.host,
        smtp_port=sink.port,
        smtp_tls="none",
        retry_base_s=1.0,
        retry_max_s=30.0,
        # A dev SMS without a validity period that never gets a receipt (numbers ending 94)
        # shows `receipt_timeout` after about a minute, not after two days.
        receipt_wait_s=60.0,
        receipt_grace_s=5.0,
        route_cache_ttl_s=1.0,
        # Email goes out with VERP envelope senders; the worker's bounce receiver takes the
        # sink's DSNs (for `...90@` addresses) on a free loopback port.
        bounce_domain=DEV_BOUNCE_DOMAIN,
        bounce_listen_host="127.0.0.1",
        bounce_listen_port=0,
        **overrides,
    )


class _StopSignals:
    """SIGTERM and SIGINT for `run_dev`, handled from the first step of start-up on.

    A signal during start-up lets the step under way finish (a migration is never cut short)
    and then stops start-up; what has started is closed as on any other shutdown. Once the
    API and the dispatcher run, a signal stops both; a second one stops waiting for open API
    connections (the worker's clean-up, like `amnex worker`'s, still runs to the end).
    """

    def __init__(self) -> None:
        self.requested = False
        self.server: DevServer | None = None
        self.dispatcher: Dispatcher | None = None

    def __call__(self, sig: signal.Signals) -> None:
        if self.requested:
            if self.server is not None:
                self.server.force_exit = True
        else:
            log.info("%s received: shutting down", sig.name)
            self.requested = True
        if self.server is not None:
            self.server.should_exit = True
        if self.dispatcher is not None:
            self.dispatcher.stop()


async def run_dev(host: str, port: int, data_dir: Path, *, log_level: str = "info") -> None:
    signals = _StopSignals()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals, sig)
    try:
        await _start_and_serve(host, port, data_dir, log_level, signals)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("amnex dev stopped")


async def _start_and_serve(
    host: str, port: int, data_dir: Path, log_level: str, signals: _StopSignals
) -> None:
    """Start everything, serve until `signals` asks to stop, then close what was started.

    Each part that starts registers its clean-up on the stack, so that the stack unwinds in
    the order of `amnex worker`: stop claiming and drain the sends in flight, then unbind,
    give the bind leases back and close.
    """
    async with contextlib.AsyncExitStack() as stack:
        data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before serving
        sink = SmtpSink(host="127.0.0.1", port=0)
        await sink.start()
        stack.push_async_callback(sink.stop)
        smsc = SmscSimulator(host="127.0.0.1", port=0)
        await smsc.start()
        stack.push_async_callback(smsc.stop)
        settings = dev_settings(data_dir, sink)
        if settings.public_url is None:
            # Unsubscribe links in marketing email point at this server.
            settings = settings.model_copy(update={"public_url": f"http://{host}:{port}"})
        db = Database(settings)
        stack.push_async_callback(db.dispose)
        await upgrade_database(db)
        dev_json = data_dir / "dev.json"
        creds = await bootstrap_demo(db, _read_previous(dev_json))
        await bootstrap_smsc_route(db, SecretBox.from_settings(settings), smsc)
        if signals.requested:
            return

        worker = await WorkerParts.start(settings, db)
        stack.push_async_callback(worker.close)
        if signals.requested:
            return
        if worker.bounce_receiver is not None:
            sink.send_bounces_to(worker.bounce_receiver.host, worker.bounce_receiver.port)
        dispatcher = build_dispatcher(
            settings, db, worker.channels, poll_interval_s=settings.poll_interval_s
        )
        rt = Runtime.build(settings, db=db, on_commit=dispatcher.wake)
        rt.simulators["smtp"] = sink
        rt.simulators["smsc"] = smsc
        stack.push_async_callback(rt.close, dispose_db=False)
        app = create_app(rt, manage_lifecycle=False)
        server = DevServer(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level=log_level,
                log_config=None,  # uvicorn's records go to the masked root handler
                access_log=False,
                server_header=False,
                lifespan="on",
            )
        )
        signals.server = server
        signals.dispatcher = dispatcher
        api_url = f"http://{host}:{port}"
        _write_private(
            dev_json,
            json.dumps(
                {
                    "api_url": api_url,
                    "api_key": creds.api_key,
                    "account_id": creds.account_id,
                    "admin_token": creds.admin_token,
                    "smsc": {
                        "host": smsc.host,
                        "port": smsc.port,
                        "system_id": smsc.system_id,
                        "password": smsc.password,
                    },
                    "smtp": {"host": sink.host, "port": sink.port},
                },
                indent=2,
            )
            + "\n",
        )
        await rt.start()
        if signals.requested:
            return
        tune_gc_for_serving()
        dispatch_task = asyncio.create_task(dispatcher.run(), name="dispatcher")
        stack.push_async_callback(_stop_dispatcher, dispatcher, dispatch_task)
        print(  # noqa: T201 - the dev command talks to the person who ran it
            f"\nAmnex dev is running at {api_url}  (API docs: {api_url}/docs)\n"
            f"Credentials: {dev_json}\n\n"
            f"Send an SMS:\n\n{curl_example(api_url, creds.api_key, 'sms')}\n\n"
            f"Send an email:\n\n{curl_example(api_url, creds.api_key, 'email')}\n\n"
            f"What the simulators received: curl -s {api_url}/_dev/smsc/messages  "
            f"(and /_dev/smtp/messages)\n",
            flush=True,
        )
        await server.serve()


async def _stop_dispatcher(dispatcher: Dispatcher, task: asyncio.Task[None]) -> None:
    """Stop claiming and wait for the sends in flight (the dispatcher's shutdown grace)."""
    dispatcher.stop()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # `run_dev` itself is being cancelled, not only the dispatcher
    except Exception:
        log.exception("the dispatcher failed")
