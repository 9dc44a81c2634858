"""A real `amnex worker` killed between submit_sm and its receipt loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable

import httpx

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smsc import SmscSimulator
from support import (
    StartSmsc,
    add_smpp_route,
    eventually,
    free_socket,
    make_account,
    serve_api,
    wait_for_status,
    with_master_key,
)


def start_worker(settings: Settings, metrics_port: int | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    assert settings.master_key is not None
    env.update(
        {
            "AMNEX_DATABASE_URL": settings.database_url,
            "AMNEX_MASTER_KEY": settings.master_key.get_secret_value(),
            "AMNEX_POLL_INTERVAL_S": "0.05",
            "AMNEX_ROUTE_CACHE_TTL_S": "0.2",
        }
    )
    if metrics_port is not None:
        env["AMNEX_WORKER_METRICS_PORT"] = str(metrics_port)
    return subprocess.Popen(
        [sys.executable, "-m", "amnex", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_receipt_owed_to_a_killed_worker_is_applied_after_restart(
    settings: Settings, db: Database, start_smsc: StartSmsc
) -> None:
    smsc = await start_smsc(receipt_delay_s=1.5)
    settings = with_master_key(settings)
    account = await make_account(db, sms_number="+13125550188")
    await add_smpp_route(db, settings, host=smsc.host, port=smsc.port)
    with free_socket() as sock:
        metrics_port = sock.getsockname()[1]
    first = start_worker(settings, metrics_port)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with serve_api(settings, db) as api:
            response = await api.client.post(
                "/v1/messages",
                headers=account.headers,
                json={"channel": "sms", "to": "+14155550100", "body": "kill me"},
            )
            assert response.status_code == 201, response.text
            message_id = response.json()["id"]

            # Given the worker submitted the SMS and recorded it as sent
            await wait_for_status(api.client, account, message_id, {"sent"}, timeout_s=30)
            assert len(smsc.messages()) == 1
            # (the worker's own metrics say what it did)
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert "amnex_smpp_binds_total{connector=" in metrics
            assert 'amnex_dispatch_outcomes_total{channel="sms",outcome="sent"} 1.0' in metrics
            # When it is killed before the receipt comes
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            await eventually(_bound_sessions(smsc), lambda n: n == 0)
            status = await api.client.get(f"/v1/messages/{message_id}", headers=account.headers)
            assert status.json()["status"] == "sent"

            # Then a new worker binds, the SMSC offers the receipt again, and it is applied
            second = start_worker(settings)
            message = await wait_for_status(
                api.client, account, message_id, {"delivered"}, timeout_s=30
            )
            assert message["error_code"] is None
            # And the SMS itself was submitted once only
            assert len(smsc.messages()) == 1
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _bound_sessions(smsc: SmscSimulator) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return smsc.bound_sessions

    return probe
