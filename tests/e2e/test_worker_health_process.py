"""A real `amnex worker` process answers `/healthz`, `/readyz` and `/metrics` on its port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smsc import SmscSimulator
from support import add_smpp_route, eventually, free_socket, with_master_key


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "amnex", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_worker_process_is_ready_once_it_binds_its_connector(
    settings: Settings, db: Database, smsc: SmscSimulator
) -> None:
    settings = with_master_key(settings)
    connector_id = await add_smpp_route(db, settings, host=smsc.host, port=smsc.port)
    with free_socket() as sock:
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    assert settings.master_key is not None
    env.update(
        {
            "AMNEX_DATABASE_URL": settings.database_url,
            "AMNEX_MASTER_KEY": settings.master_key.get_secret_value(),
            "AMNEX_POLL_INTERVAL_S": "0.05",
            "AMNEX_ROUTE_CACHE_TTL_S": "0.2",
            "AMNEX_WORKER_METRICS_PORT": str(port),
        }
    )
    worker = start_worker(env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            async def readyz() -> httpx.Response | None:
                try:
                    return await client.get("/readyz")
                except httpx.TransportError:
                    return None  # not listening yet

            # Given a worker started with a metrics port and one SMPP connector to bind
            # Then its /readyz turns 200 once the database answered and the bind is up
            response = await eventually(
                readyz, lambda r: r is not None and r.status_code == 200, timeout_s=30
            )
            assert response is not None
            assert response.json() == {
                "status": "ok",
                "checks": {"database": "ok", "binds": "ok"},
            }
            assert smsc.bound_sessions == 1
            # And the same port serves /healthz and the metrics page with the window gauges
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            page = (await client.get("/metrics")).text
            assert f'amnex_smpp_window_size{{connector="{connector_id}"}} 50.0' in page
            assert f'amnex_smpp_window_in_use{{connector="{connector_id}"}} 0.0' in page
    finally:
        worker.send_signal(signal.SIGTERM)
        # Waited for off the loop: the simulator on this loop must answer the worker's unbind.
        try:
            returncode = await asyncio.to_thread(worker.wait, 15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            raise
    assert returncode == 0
