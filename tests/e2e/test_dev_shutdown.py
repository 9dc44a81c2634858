"""`amnex dev` stopped by SIGTERM or Ctrl-C shuts its worker down as `amnex worker` does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import eventually, free_socket

# The simulator records a submit_sm to a number ending 93 and never answers it: the send stays
# in flight until the dispatcher's shutdown grace runs out.
UNANSWERED = "+14155550193"


def _rows(db_path: Path, sql: str, *params: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def start_dev(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    env["AMNEX_SHUTDOWN_GRACE_S"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "amnex", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_dev_gives_back_its_leases_and_exits_0_when_asked_to_stop(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]
    data_dir = tmp_path / "amnex-dev"
    proc = start_dev(data_dir, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await eventually(lambda: _ready(client), bool, timeout_s=60, interval_s=0.2)
            config = json.loads((data_dir / "dev.json").read_text())
            headers = {"Authorization": f"Bearer {config['api_key']}"}

            # Given an SMS the SMSC has taken but not answered: the send is in flight
            created = await client.post(
                "/v1/messages",
                headers=headers,
                json={"channel": "sms", "to": UNANSWERED, "body": "Still waiting"},
            )
            assert created.status_code == 201, created.text
            message_id = created.json()["id"]
            await eventually(
                lambda: client.get("/_dev/smsc/messages"),
                lambda r: [m["text"] for m in r.json()["data"]] == ["Still waiting"],
                timeout_s=30,
            )
            status = await client.get(f"/v1/messages/{message_id}", headers=headers)
            assert status.json()["status"] == "sending"
            db_path = data_dir / "amnex.db"
            assert _rows(db_path, "SELECT count(*) FROM bind_leases") == [(1,)]

        # When the process is asked to stop
        proc.send_signal(sig)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = output.decode()

    # Then it exits 0 after the worker's clean-up: the send in flight is given back, due at
    # once, and the bind slot is free for another worker now, not when its lease expires
    assert proc.returncode == 0, log[-3000:]
    given_back = "SELECT status, lease_owner FROM messages WHERE id = ?"
    assert _rows(db_path, given_back, message_id) == [("queued", None)]
    assert _rows(db_path, "SELECT * FROM bind_leases") == []
    assert _rows(db_path, "SELECT * FROM bind_lease_workers") == []
    assert f"{sig.name} received: shutting down" in log
    assert "released 1 leases at shutdown" in log
    assert "released 1 bind leases" in log
    assert "amnex dev stopped" in log


@pytest.mark.slow
async def test_dev_stopped_during_start_up_exits_0_and_holds_no_bind_leases(
    tmp_path: Path,
) -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]
    data_dir = tmp_path / "amnex-dev"
    proc = start_dev(data_dir, port)
    try:
        # Given a process that has begun starting up (its first log line comes from the
        # migrations, before the worker binds)
        assert proc.stdout is not None
        first_line = await asyncio.to_thread(proc.stdout.readline)
        assert first_line, "amnex dev exited before logging anything"

        # When it is asked to stop before start-up has finished
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (first_line + rest).decode()

    # Then it stops in order, whichever step it had reached: exit 0, no bind slot held
    assert proc.returncode == 0, log[-3000:]
    assert "SIGTERM received: shutting down" in log
    assert "amnex dev stopped" in log
    assert _rows(data_dir / "amnex.db", "SELECT * FROM bind_leases") == []
    assert _rows(data_dir / "amnex.db", "SELECT * FROM bind_lease_workers") == []
