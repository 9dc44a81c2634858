"""A real `amnex worker` process answers `/healthz`, `/readyz` and `/metrics` on its port,
taken from its settings or its command line, and logs in the format its settings ask for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smsc import SmscSimulator
from support import add_smpp_route, eventually, free_socket, with_master_key


async def ready(client: httpx.AsyncClient) -> httpx.Response:
    """The worker's first 200 from /readyz (connection errors while it starts count as not
    yet)."""

    async def readyz() -> httpx.Response | None:
        try:
            return await client.get("/readyz")
        except httpx.TransportError:
            return None  # not listening yet

    response = await eventually(
        readyz, lambda r: r is not None and r.status_code == 200, timeout_s=30
    )
    assert response is not None
    return response


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
            # Given a worker started with a metrics port and one SMPP connector to bind
            # Then its /readyz turns 200 once the database answered and the bind is up
            response = await ready(client)
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


async def test_a_worker_takes_its_port_from_the_command_line_and_logs_as_its_config_file_says(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    # Given a configuration file that asks for JSON logs, and no log setting in the environment
    settings = with_master_key(settings)
    assert settings.master_key is not None
    config = tmp_path / "amnex.toml"
    config.write_text('log_format = "json"\npoll_interval_s = 0.05\n')
    with free_socket() as sock:
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    env.update(
        {
            "AMNEX_DATABASE_URL": settings.database_url,
            "AMNEX_MASTER_KEY": settings.master_key.get_secret_value(),
        }
    )
    # When a worker starts with that file and its own metrics port (as a systemd template
    # instance does: one port per worker on a machine, the shared settings in the file)
    worker = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child process, never awaited
        [
            sys.executable,
            "-m",
            "amnex",
            "worker",
            "--config",
            str(config),
            "--metrics-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            # Then it serves its health pages on that port, and turns ready
            await ready(client)
            assert (await client.get("/healthz")).json() == {"status": "ok"}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, stderr = await asyncio.to_thread(worker.communicate, timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
            raise
    assert worker.returncode == 0, stderr
    # And every line it logged, from its first, is a JSON object
    lines = stderr.splitlines()
    assert lines, "the worker logged nothing"
    records = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "logger", "event"} <= record.keys() for record in records)
