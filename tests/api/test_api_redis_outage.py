"""The API's rate limiter across a Redis restart: one warning, one line when it is back, and
limits enforced again — on a redis-server of the test's own, never the shared one."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from amnex.api.ratelimit import REDIS_TIMEOUT_S, RateLimiter
from amnex.config import Settings
from amnex.db.engine import Database
from support import AccountHandle, eventually, free_socket, make_account, serve_api

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

LIMITER_LOG = "amnex.api.ratelimit"


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class OwnRedis:
    """A redis-server on a free loopback port, keeping nothing on disk."""

    def __init__(self) -> None:
        with free_socket() as sock:
            self.port = sock.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _pong(self.port):
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _burst(client: httpx.AsyncClient, account: AccountHandle, n: int) -> list[int]:
    """`n` reads at once (they count against the key's rate): the pool opens several
    connections, all of which a Redis restart leaves dead."""
    answers = await asyncio.gather(
        *(client.get("/v1/messages", headers=account.headers) for _ in range(n))
    )
    return [a.status_code for a in answers]


async def test_a_redis_restart_logs_one_warning_and_limits_come_back(
    settings: Settings, db: Database, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LIMITER_LOG)
    account = await make_account(db, rate_limit_per_s=5)
    async with serve_api(settings.model_copy(update={"redis_url": own_redis.url}), db) as api:
        # Given limits counted in Redis, over several pooled connections
        counted = await eventually(
            lambda: _burst(api.client, account, 12), lambda codes: 429 in codes
        )
        assert set(counted) == {200, 429}

        # When Redis goes away, requests are let through (uncounted) and logged once
        await asyncio.to_thread(own_redis.kill)
        while_down = [await _burst(api.client, account, 12) for _ in range(5)]
        assert all(code == 200 for codes in while_down for code in codes)
        down_records = [r for r in caplog.records if r.name == LIMITER_LOG]
        assert [r.levelname for r in down_records] == ["WARNING"]
        assert "unavailable" in down_records[0].getMessage()

        # And when it is back (empty, every pooled connection dead), limits are enforced again
        await asyncio.to_thread(own_redis.start)
        limited = await eventually(
            lambda: _burst(api.client, account, 12), lambda codes: 429 in codes, timeout_s=10
        )
        assert limited.count(200) <= 10  # at most two windows' worth, never uncounted
        for _ in range(5):
            assert 429 in await _burst(api.client, account, 12)
        assert api.runtime.limiter.storage_down is False

    # Then the outage is in the log as one warning and one line saying it is over
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LIMITER_LOG]
    assert [level for level, _ in records] == ["WARNING", "INFO"], records
    assert "back" in records[1][1]


async def test_a_redis_that_stops_answering_delays_one_request_per_interval_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LIMITER_LOG)
    # Given a "Redis" that accepts connections and never answers (a hung or partitioned host)
    with free_socket() as silent:
        silent.listen(16)
        port = silent.getsockname()[1]
        limiter = RateLimiter(f"redis://127.0.0.1:{port}/0", probe_interval_s=60)
        try:
            loop = asyncio.get_running_loop()
            # When requests arrive, the first waits at most the client's timeout
            started = loop.time()
            async with asyncio.timeout(REDIS_TIMEOUT_S * 3):
                first = await limiter.hit("key_silent", 5)
            first_s = loop.time() - started
            # and the ones after it are let through without waiting for Redis at all
            started = loop.time()
            later = [await limiter.hit("key_silent", 5) for _ in range(100)]
            later_s = loop.time() - started
        finally:
            await limiter.close()
    # Then every request is allowed, and the log says so once
    assert first.allowed
    assert all(d.allowed and d.remaining == d.limit for d in later)
    assert first_s < REDIS_TIMEOUT_S * 2
    assert later_s < 0.5
    assert [r.levelname for r in caplog.records if r.name == LIMITER_LOG] == ["WARNING"]
