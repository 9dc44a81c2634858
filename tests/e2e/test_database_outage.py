"""A PostgreSQL that goes away briefly: accepts wait and succeed, or answer 503; never 500.

The API reaches PostgreSQL through a TCP relay the test can cut, as a restart or a network
blip would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import Message
from support import AccountHandle, serve_api

pytestmark = pytest.mark.postgres

EMAIL = {"channel": "email", "to": "alex@example.com", "subject": "Hi", "body": "Hello"}


class Relay:
    """Forwards loopback TCP to PostgreSQL; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def relayed(settings: Settings) -> AsyncIterator[tuple[Relay, Settings]]:
    url = make_url(settings.database_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    await relay.start()
    through = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    try:
        yield relay, settings.model_copy(update={"database_url": through})
    finally:
        await relay.cut()


async def count(db: Database) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


async def test_accepts_during_a_short_outage_wait_and_succeed(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with relayed(settings.model_copy(update={"accept_db_retry_s": 5.0})) as (relay, cfg):
        api_db = Database(cfg)
        try:
            async with serve_api(cfg, api_db) as api:
                first = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
                # Given the database goes away
                port = relay.port
                await relay.cut()
                # When requests arrive during the outage, and the database returns 0.5 s later
                sends = [
                    asyncio.create_task(
                        api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
                    )
                    for _ in range(5)
                ]
                await asyncio.sleep(0.5)
                await relay.start(port)
                responses = await asyncio.gather(*sends)
        finally:
            await api_db.dispose()
    # Then every one of them was accepted and stored, once
    assert first.status_code == 201
    assert [r.status_code for r in responses] == [201] * 5
    assert await count(db) == 6


async def test_a_longer_outage_is_a_503_with_retry_after_and_stores_nothing(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with relayed(settings.model_copy(update={"accept_db_retry_s": 0.5})) as (relay, cfg):
        api_db = Database(cfg)
        try:
            async with serve_api(cfg, api_db) as api:
                # The key is checked (and cached) while the database is up.
                warm = await api.client.get("/v1/messages", headers=account.headers)
                await relay.cut()
                sent = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
                read = await api.client.get(
                    "/v1/messages/msg_01M8H3GBMN0AYCV7Y031H8EZJM", headers=account.headers
                )
        finally:
            await api_db.dispose()
    assert warm.status_code == 200
    for response in (sent, read):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "database_unavailable"
        assert int(response.headers["retry-after"]) >= 1
    assert await count(db) == 0
