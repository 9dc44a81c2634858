"""The worker's `/healthz`, `/readyz` and `/metrics` on `worker_metrics_port`: real HTTP
requests to the worker's own server, readiness of the database, Redis and the binds of the
connectors whose leases the worker holds (SMSC simulator over real sockets)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smsc import SmscSimulator
from amnex.worker_process import WorkerParts, WorkerReadiness, start_metrics_server
from support import StartSmsc, add_smpp_route, eventually, free_socket, with_master_key


@dataclass
class Worker:
    readiness: WorkerReadiness
    client: httpx.AsyncClient
    parts: WorkerParts | None = None

    def held(self, connector_id: str) -> frozenset[int]:
        """The bind slots of the connector this worker holds leases of."""
        assert self.parts is not None
        assert self.parts.bind_leases is not None
        return self.parts.bind_leases.held(connector_id)

    async def holding(self, connector_id: str) -> frozenset[int]:
        """The slots held once the worker holds any: its first renewal may time out on a
        loaded machine (after `bind_lease_renew_s`), and the next one takes them."""

        async def slots() -> frozenset[int]:
            return self.held(connector_id)

        return await eventually(slots, bool)

    async def readyz(self) -> httpx.Response:
        """A fresh round of checks (as the worker's loop runs every second), then `/readyz`."""
        await self.readiness.check_once()
        return await self.client.get("/readyz")


@contextlib.asynccontextmanager
async def health_server(
    settings: Settings, readiness: WorkerReadiness, parts: WorkerParts | None = None
) -> AsyncIterator[Worker]:
    """The worker's HTTP server on an ephemeral port, as `amnex worker` starts it."""
    if parts is not None:
        readiness.watch_binds(parts.bind_leases, parts.sms)
    server = start_metrics_server(settings.model_copy(update={"worker_metrics_port": 0}), readiness)
    assert server is not None
    try:
        base_url = f"http://127.0.0.1:{server.server_port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            yield Worker(readiness, client, parts)
    finally:
        server.shutdown()
        server.server_close()
        await readiness.close()


@contextlib.asynccontextmanager
async def worker(settings: Settings, db: Database) -> AsyncIterator[Worker]:
    """A worker's parts (channels, bind leases) in this process, and its health server."""
    parts = await WorkerParts.start(settings, db)
    try:
        async with health_server(
            settings, WorkerReadiness(db, redis_url=settings.redis_url), parts
        ) as running:
            yield running
    finally:
        await parts.close()


@pytest.fixture
def sms_settings(settings: Settings) -> Settings:
    return with_master_key(
        settings, route_cache_ttl_s=0.2, bind_lease_ttl_s=4.0, bind_lease_renew_s=0.3
    )


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 document as the API writes them (tests/api/api_checks.py); its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:amnex:problem:{code}"
    assert (problem["status"], problem["code"], problem["title"]) == (status, code, "Not ready")
    assert problem["detail"]
    return problem


def closed_port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def expected(checks: dict[str, str], settings: Settings) -> dict[str, str]:
    """The checks a worker reports: Redis only when one is configured."""
    redis = {"redis": "ok"} if settings.redis_url else {}
    return {"database": checks["database"], **redis, "binds": checks["binds"]}


async def test_healthz_and_metrics_answer_on_the_worker_port(
    sms_settings: Settings, db: Database
) -> None:
    async with worker(sms_settings, db) as running:
        health = await running.client.get("/healthz")
        metrics = await running.client.get("/metrics")

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# HELP amnex_smpp_window_in_use " in metrics.text
    assert "# HELP amnex_dispatch_outcomes_total " in metrics.text


async def test_readyz_is_ok_when_the_database_answers_and_held_connectors_are_bound(
    sms_settings: Settings, db: Database, smsc: SmscSimulator
) -> None:
    # Given a connector whose one bind lease this worker takes, and an SMSC that answers
    connector_id = await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port)
    async with worker(sms_settings, db) as running:
        assert await running.holding(connector_id) == {0}
        # Then, once the bind is up, the worker is ready, in the shape of the API's /readyz
        response = await eventually(running.readyz, lambda r: r.status_code == 200)

    assert response.json() == {
        "status": "ok",
        "checks": expected({"database": "ok", "binds": "ok"}, sms_settings),
    }


async def test_readyz_is_503_while_a_held_connector_cannot_bind(
    sms_settings: Settings, db: Database, start_smsc: StartSmsc
) -> None:
    # Given a connector this worker holds the lease of, whose SMSC is not listening
    smsc = await start_smsc()
    port = smsc.port
    await smsc.stop()
    connector_id = await add_smpp_route(
        db, sms_settings, host=smsc.host, port=port, reconnect_min_s=0.05, reconnect_max_s=0.1
    )
    async with worker(sms_settings, db) as running:
        assert await running.holding(connector_id) == {0}
        # Then the worker is alive but not ready, and says which connector is unbound
        response = await running.readyz()
        problem = assert_problem(response, 503, "not_ready")
        assert response.headers["retry-after"] == "1"
        assert problem["checks"] == expected(
            {"database": "ok", "binds": f"unbound: {connector_id}"}, sms_settings
        )
        assert f"binds: unbound: {connector_id}" in problem["detail"]
        assert problem["instance"] == "/readyz"
        assert (await running.client.get("/healthz")).status_code == 200

        # When the SMSC comes up on its port, the bind follows and the worker is ready
        await start_smsc(port=port)
        await eventually(running.readyz, lambda r: r.status_code == 200)


async def test_a_worker_that_holds_no_lease_is_ready_on_binds(
    sms_settings: Settings, db: Database, smsc: SmscSimulator
) -> None:
    # Given a one-bind connector whose lease another worker took first
    connector_id = await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port)
    async with worker(sms_settings, db) as first:
        assert await first.holding(connector_id) == {0}
        async with worker(sms_settings, db) as second:
            assert second.held(connector_id) == frozenset()
            # Then the worker without it is ready: its binds are another worker's to hold
            response = await second.readyz()

    assert response.status_code == 200, response.text
    assert response.json()["checks"]["binds"] == "ok"


async def test_readyz_is_503_when_the_database_is_away(settings: Settings) -> None:
    away = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://nobody@127.0.0.1:{closed_port()}/none"}
    )
    broken = Database(away)
    try:
        async with health_server(away, WorkerReadiness(broken)) as running:
            # Before the first check, the worker is not ready yet
            before = await running.client.get("/readyz")
            response = await running.readyz()
            health = await running.client.get("/healthz")
            metrics = await running.client.get("/metrics")
    finally:
        await broken.dispose()

    assert assert_problem(before, 503, "not_ready")["checks"] == {
        "database": "unavailable: not checked yet",
        "binds": "ok",
    }
    problem = assert_problem(response, 503, "not_ready")
    assert problem["checks"]["database"].startswith("unavailable: ")
    assert problem["checks"]["binds"] == "ok"
    assert response.headers["retry-after"] == "1"
    # The process itself is alive, and its metrics page still renders
    assert health.status_code == 200
    assert metrics.status_code == 200


async def test_readyz_is_503_when_the_database_has_not_answered_lately(
    settings: Settings, db: Database
) -> None:
    # Given a worker whose last database answer came at t=100
    now = [100.0]
    readiness = WorkerReadiness(db, database_fresh_s=5.0, clock=lambda: now[0])
    async with health_server(settings, readiness) as running:
        response = await running.readyz()
        assert response.status_code == 200, response.text
        # When its loop runs no check for longer than the database may stay silent
        now[0] += 5.5
        stale = await running.client.get("/readyz")

    # Then it is not ready: an answer that old says nothing about the database now
    problem = assert_problem(stale, 503, "not_ready")
    assert problem["checks"]["database"] == "unavailable: no answer for 5s"


async def test_readyz_is_503_when_the_configured_redis_is_away(
    settings: Settings, db: Database
) -> None:
    readiness = WorkerReadiness(db, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    async with health_server(settings, readiness) as running:
        response = await running.readyz()

    problem = assert_problem(response, 503, "not_ready")
    assert problem["checks"] == {"database": "ok", "redis": "unavailable", "binds": "ok"}
    assert "redis: unavailable" in problem["detail"]
