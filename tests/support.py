"""Test support: a real API server on a loopback socket, factories, and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import itertools
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from amnex.accounts import service as accounts
from amnex.accounts.service import KeyContext
from amnex.api.app import create_app
from amnex.carriers import service as carriers
from amnex.carriers.routing import RouteTable
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.models import Base
from amnex.dispatch.worker import Dispatcher
from amnex.messages.accept import AcceptWriter
from amnex.messages.models import Message, MessageEvent
from amnex.messages.schemas import SendMessageRequest
from amnex.messages.service import prepare_message
from amnex.privacy.crypto import SecretBox, generate_key
from amnex.runtime import Runtime
from amnex.simulators.smsc import SmscSimulator
from amnex.simulators.smtp_sink import SmtpSink
from amnex.worker_process import WorkerParts, build_dispatcher

T = TypeVar("T")

# Starts an SMTP sink with the given options (the `start_sink` fixture).
StartSink = Callable[..., Awaitable[SmtpSink]]
StartSmsc = Callable[..., Awaitable[SmscSimulator]]
# `capture(json)` routes logging into a fresh stream (the `capture` fixture).
Capture = Callable[[bool], io.StringIO]


@dataclass
class AccountHandle:
    account_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def make_account(
    db: Database,
    *,
    email_senders: tuple[str, ...] = ("news@shop.example",),
    default_email: str | None = "news@shop.example",
    rate_limit_per_s: int | None = None,
    name: str = "Shop Example",
    sms_number: str | None = None,
    compliance: dict[str, Any] | None = None,
    retention: dict[str, Any] | None = None,
) -> AccountHandle:
    """An active account with a key holding every scope and the given verified senders
    (and `compliance`: its compliance settings, as `PATCH .../compliance` would set them;
    `retention`: its retention settings, as `PATCH .../retention` would)."""
    async with db.unit_of_work() as session:
        settings: dict[str, Any] = (
            {"rate_limit_per_s": rate_limit_per_s} if rate_limit_per_s else {}
        )
        if compliance is not None:
            settings["compliance"] = compliance
        if retention is not None:
            settings["retention"] = retention
        account, _, key = await accounts.create_account(
            session,
            business_name=name,
            contact_name="Pat Example",
            email="pat@shop.example",
            settings=settings,
            actor="test",
        )
        for address in email_senders:
            await accounts.add_sender(
                session,
                account_id=account.id,
                channel="email",
                address=address,
                is_default=address == default_email,
                actor="test",
            )
        await accounts.add_sender(
            session,
            account_id=account.id,
            channel="sms",
            address=sms_number or next_sms_number(),
            is_default=True,
            actor="test",
        )
    return AccountHandle(account.id, key)


_SMS_NUMBERS = itertools.count(random.randrange(1000, 9000))


def next_sms_number() -> str:
    """A valid US number no other test account owns (a number belongs to one account)."""
    return f"+1312555{next(_SMS_NUMBERS) % 10_000:04d}"


async def make_operator(db: Database, name: str = "Op Example") -> str:
    async with db.unit_of_work() as session:
        _, token = await accounts.create_operator(session, name=name, email=None, actor="test")
    return token


async def truncate_all(db: Database) -> None:
    async with db.engine.begin() as conn:
        names = [t.name for t in reversed(Base.metadata.sorted_tables)]
        if db.is_sqlite:
            for name in names:
                await conn.execute(text(f"DELETE FROM {name}"))  # noqa: S608 - table names
        else:
            await conn.execute(text(f"TRUNCATE {', '.join(names)} CASCADE"))


def free_socket() -> socket.socket:
    # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY only on sockets that say so.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class ApiServer:
    base_url: str
    runtime: Runtime
    client: httpx.AsyncClient
    dispatcher: Dispatcher | None = None


@contextlib.asynccontextmanager
async def serve_api(
    settings: Settings,
    db: Database,
    *,
    dispatcher_factory: Callable[[Database], Dispatcher] | None = None,
) -> AsyncIterator[ApiServer]:
    """`amnex serve` (and optionally an in-process dispatcher) on a real loopback socket."""
    dispatcher = dispatcher_factory(db) if dispatcher_factory else None
    rt = Runtime.build(settings, db=db, on_commit=dispatcher.wake if dispatcher else None)
    app = create_app(rt, manage_lifecycle=False)
    await rt.start()
    sock = free_socket()
    port = sock.getsockname()[1]
    # The server keeps idle connections longer than the client (httpx: 5 s), so the client
    # always drops one first: with equal timeouts a request sent on a connection the server
    # is closing that moment is reset (httpx.ReadError) when the test process stalls.
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=30
        )
    )
    serve_task = asyncio.create_task(server.serve(sockets=[sock]))
    dispatch_task = asyncio.create_task(dispatcher.run()) if dispatcher else None
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        try:
            yield ApiServer(base_url, rt, client, dispatcher)
        finally:
            if dispatcher and dispatch_task:
                dispatcher.stop()
                await dispatch_task
            server.should_exit = True
            await serve_task
            await rt.close(dispose_db=False)
            sock.close()


@contextlib.asynccontextmanager
async def serve_system(settings: Settings, db: Database) -> AsyncIterator[ApiServer]:
    """The API and a whole worker (channels, receipts, sweeps, dispatcher) in this process."""
    parts = await WorkerParts.start(settings, db)

    def dispatcher(database: Database) -> Dispatcher:
        return build_dispatcher(settings, database, parts.channels, poll_interval_s=0.05)

    try:
        async with serve_api(settings, db, dispatcher_factory=dispatcher) as api:
            yield api
    finally:
        await parts.close()


def with_master_key(settings: Settings, **more: Any) -> Settings:
    """Settings that can store connector passwords: the suite's master key (the one the
    database was set up with), or a fresh one when the settings have none."""
    key = settings.master_key or SecretStr(generate_key())
    return settings.model_copy(update={"master_key": key, **more})


async def add_smpp_route(
    db: Database,
    settings: Settings,
    *,
    host: str,
    port: int,
    system_id: str = "amnex",
    password: str = "secret",  # noqa: S107 - the simulator's documented credential
    name: str = "test-smsc",
    prefix: str = "",
    **config: Any,
) -> str:
    """A connector to an SMSC and a route sending SMS to it; returns the connector id."""
    box = SecretBox.from_settings(settings)
    async with db.unit_of_work() as session:
        connector = await carriers.create_connector(
            session,
            box,
            name=name,
            config={"host": host, "port": port, "system_id": system_id, **config},
            password=password,
            actor="test",
        )
        await carriers.create_route(
            session, channel="sms", connector_ids=[connector.id], prefix=prefix, actor="test"
        )
    return connector.id


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout_s: float = 15.0,
    interval_s: float = 0.05,
) -> T:
    """Poll `probe` until `accept` holds; fail with the last value seen after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await probe()
        if accept(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last value: {value!r}")
        await asyncio.sleep(interval_s)


async def wait_for_status(
    client: httpx.AsyncClient,
    account: AccountHandle,
    message_id: str,
    statuses: set[str],
    *,
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        response = await client.get(f"/v1/messages/{message_id}", headers=account.headers)
        body: dict[str, Any] = response.json()
        return body

    return await eventually(probe, lambda m: m.get("status") in statuses, timeout_s=timeout_s)


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile = directory / "cert.pem"
    keyfile = directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


def server_tls_context(directory: Path) -> ssl.SSLContext:
    """A TLS server context with a fresh self-signed certificate for 127.0.0.1 and localhost."""
    certfile, keyfile = write_self_signed_certificate(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context


# Tables that hold personal data: what `on_disk` scans on PostgreSQL.
PERSONAL_TABLES = (
    "messages",
    "opt_outs",
    "opt_out_events",
    "consent_entries",
    "inbound_parts",
    "subject_requests",
    "subject_request_exports",
    "audit_personal",
)


async def on_disk(db: Database, needle: str, tables: tuple[str, ...] = ("messages",)) -> bool:
    """Whether `needle` is anywhere in the database's files: SQLite's file and WAL, or the
    PostgreSQL heap files of `tables` after a checkpoint."""
    probe = needle.encode()
    if db.is_sqlite:
        path = Path(str(make_url(db.url).database))
        files = [path, Path(f"{path}-wal")]
        return any(f.exists() and probe in f.read_bytes() for f in files)
    async with db.engine.connect() as conn:
        await conn.execute(text("CHECKPOINT"))
        for table in tables:
            relation = (
                await conn.execute(text("SELECT pg_relation_filepath(:t)"), {"t": table})
            ).scalar()
            data = (
                await conn.execute(text("SELECT pg_read_binary_file(:p)"), {"p": relation})
            ).scalar()
            if data is not None and probe in bytes(data):
                return True
    return False


async def accept_emails(
    db: Database, account: AccountHandle, *recipients: str, **fields: Any
) -> list[str]:
    """Store one email per recipient through the accept writer, as the API does (no route
    table: email goes to the relay); their ids, in order."""
    context = KeyContext(
        key_id="key_test",
        account_id=account.account_id,
        scopes=frozenset({"send"}),
        rate_limit_per_s=None,
        account_settings={},
        senders={"email": frozenset({"news@shop.example"})},
        default_senders={"email": "news@shop.example"},
    )
    routes = RouteTable(static_channels=frozenset({"email"}))
    writer = AcceptWriter(db, writers=1, batch_max=100, db_retry_s=1)
    await writer.start()
    ids = []
    try:
        for to in recipients:
            request = SendMessageRequest.model_validate(
                {"channel": "email", "to": to, "subject": "Hi", "body": "Hello", **fields}
            )
            prepared = prepare_message(context, request, now=utc_now(), routes=routes)
            await writer.submit(prepared)
            ids.append(str(prepared.row["id"]))
    finally:
        await writer.close()
    return ids


async def load_message(db: Database, message_id: str) -> Message:
    async with db.read_session() as session:
        message = await session.get(Message, message_id)
    assert message is not None
    return message


async def message_events(db: Database, message_id: str) -> list[MessageEvent]:
    async with db.read_session() as session:
        rows = await session.scalars(
            select(MessageEvent)
            .where(MessageEvent.message_id == message_id)
            .order_by(MessageEvent.seq)
        )
        return list(rows)
