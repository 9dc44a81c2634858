"""Test fixtures: a real database (SQLite, or PostgreSQL when AMNEX_TEST_DATABASE_URL names
one), real sockets, and Redis when AMNEX_TEST_REDIS_URL is set.

With CI=true a configured PostgreSQL or Redis that cannot be reached fails the run instead of
skipping tests.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy import delete
from sqlalchemy.engine import make_url

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.migrate import upgrade_database
from amnex.logging_setup import THIRD_PARTY_LOGGERS, configure_logging
from amnex.privacy.audit import AuditChainHead, AuditEntry, AuditPersonal
from amnex.privacy.crypto import SecretBox, generate_key
from amnex.privacy.keys import start_address_keys
from amnex.simulators.smsc import SmscSimulator
from amnex.simulators.smtp_sink import SmtpSink
from support import AccountHandle, Capture, StartSink, StartSmsc, make_account, truncate_all

IN_CI = os.environ.get("CI", "").lower() == "true"


def _suite_url() -> str | None:
    return os.environ.get("AMNEX_TEST_DATABASE_URL")


def _is_postgres(url: str) -> bool:
    return url.startswith("postgres")


async def _create_pg_database(base_url: str) -> str:
    """A fresh database for this test session, so runs never see each other's rows."""
    url = make_url(base_url)
    name = f"amnex_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return url.set(drivername="postgresql+asyncpg", database=name).render_as_string(False)


async def _drop_pg_database(base_url: str, url: str) -> None:
    name = make_url(url).database
    admin = await asyncpg.connect(
        make_url(base_url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = _suite_url()
    if base is None or not _is_postgres(base):
        path = tmp_path_factory.mktemp("db") / "amnex.db"
        url = f"sqlite+aiosqlite:///{path}"
        asyncio.run(_migrate(url))
        yield url
        return
    base = Settings(database_url=base).database_url
    try:
        url = asyncio.run(_create_pg_database(base))
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.exit(f"PostgreSQL configured but unreachable in CI: {exc}", returncode=3)
        pytest.skip(f"PostgreSQL not reachable at {base}: {exc}")
    asyncio.run(_migrate(url))
    yield url
    asyncio.run(_drop_pg_database(base, url))


async def _migrate(url: str) -> None:
    db = Database(Settings(database_url=url))
    try:
        await upgrade_database(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str | None:
    url = os.environ.get("AMNEX_TEST_REDIS_URL")
    if url is None:
        return None
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.exit(f"Redis configured but unreachable in CI: {exc}", returncode=3)
        return None
    finally:
        client.close()
    return url


@pytest.fixture
def on_postgres(database_url: str) -> bool:
    return _is_postgres(database_url)


SUITE_MASTER_KEY = generate_key()


@pytest.fixture
def base_settings(
    request: pytest.FixtureRequest, database_url: str, redis_url: str | None
) -> Settings:
    """Settings for the suite's database; tests add what they need with model_copy(update=…).

    With a master key, as every deployment should have: message content and addresses are
    encrypted at rest in every test. A test about running without one is marked
    `no_master_key`: its database is then set up unkeyed too, as a deployment without a key
    is (a keyed database refuses processes without the key).
    """
    keyed = request.node.get_closest_marker("no_master_key") is None
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        master_key=SecretStr(SUITE_MASTER_KEY) if keyed else None,
        poll_interval_s=0.05,
        retry_base_s=0.05,
        retry_max_s=0.2,
        lease_s=30,
        shutdown_grace_s=5,
    )


@pytest.fixture
async def start_sink() -> AsyncIterator[StartSink]:
    """Start SMTP sinks with any options; every one is stopped after the test."""
    sinks: list[SmtpSink] = []

    async def start(**kwargs: Any) -> SmtpSink:
        sink = SmtpSink(**kwargs)
        await sink.start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        await sink.stop()


@pytest.fixture
async def start_smsc() -> AsyncIterator[StartSmsc]:
    started: list[SmscSimulator] = []

    async def start(**kwargs: Any) -> SmscSimulator:
        smsc = SmscSimulator(**{"receipt_delay_s": 0.01, **kwargs})
        await smsc.start()
        started.append(smsc)
        return smsc

    yield start
    for smsc in started:
        await smsc.stop()


@pytest.fixture
async def smsc(start_smsc: StartSmsc) -> SmscSimulator:
    return await start_smsc()


@pytest.fixture
async def sink(start_sink: StartSink) -> SmtpSink:
    return await start_sink()


@pytest.fixture
def settings(base_settings: Settings, sink: SmtpSink) -> Settings:
    return base_settings.model_copy(
        update={"smtp_host": sink.host, "smtp_port": sink.port, "smtp_tls": "none"}
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The suite's database, with the address keyring a process installs at start (so rows a
    test writes directly are sealed and indexed as the API's are)."""
    database = Database(settings)
    ring = await start_address_keys(database, SecretBox.from_settings(settings))
    try:
        yield database
    finally:
        if ring is not None:
            await ring.close()
        await truncate_all(database)
        await database.dispose()


@pytest.fixture
async def empty_audit_log(db: Database) -> None:
    """An empty audit log, for storage tests that write audit entries as plain rows (the
    keyring's own entries, written when `db` started it, are removed)."""
    async with db.unit_of_work() as session:
        await session.execute(delete(AuditPersonal))
        await session.execute(delete(AuditEntry))
        await session.execute(delete(AuditChainHead))


@pytest.fixture
async def account(db: Database) -> AccountHandle:
    return await make_account(db)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    url = _suite_url()
    if url is not None and _is_postgres(url):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: runs in the PostgreSQL pass of .ci/run")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def capture() -> Iterator[Capture]:
    """`capture(json)` configures logging into a fresh stream; the old setup comes back after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    saved_third_party = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in THIRD_PARTY_LOGGERS
    }

    def configure(as_json: bool) -> io.StringIO:
        stream = io.StringIO()
        configure_logging("DEBUG", as_json, stream=stream)
        return stream

    try:
        yield configure
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, (handlers, propagate) in saved_third_party.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
