"""`amnex dev` as a new user runs it: one process, dev.json, an email delivered to the sink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import eventually, free_socket


@contextmanager
def amnex_dev(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "amnex", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


async def ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
async def test_dev_delivers_an_email_and_keeps_its_credentials_across_restarts(
    tmp_path: Path,
) -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]
    data_dir = tmp_path / "amnex-dev"
    base = f"http://127.0.0.1:{port}"

    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        with amnex_dev(data_dir, port):
            await eventually(lambda: ready(client), bool, timeout_s=60, interval_s=0.2)
            config = json.loads((data_dir / "dev.json").read_text())
            assert config["api_url"] == base
            assert config["api_key"].startswith("amx_")
            assert config["admin_token"].startswith("amxop_")
            assert set(config["smtp"]) == {"host", "port"}
            assert oct((data_dir / "dev.json").stat().st_mode & 0o777) == "0o600"
            headers = {"Authorization": f"Bearer {config['api_key']}"}

            # The demo account sends from its default sender, without `from`
            created = await client.post(
                "/v1/messages",
                headers=headers,
                json={"channel": "email", "to": "someone@example.com", "subject": "Hi",
                      "body": "Hello from dev"},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            message_id = created.json()["id"]

            async def status() -> Any:
                return (await client.get(f"/v1/messages/{message_id}", headers=headers)).json()

            message = await eventually(status, lambda m: m["status"] == "delivered")
            assert message["account_id"] == config["account_id"]
            sink = (await client.get("/_dev/smtp/messages")).json()["data"]
            assert [m["x_amnex_message_id"] for m in sink] == [message_id]

            # The simulator's outcome digits: 91 is refused with 550 and fails at once
            refused = await client.post(
                "/v1/messages",
                headers=headers,
                json={"channel": "email", "to": "user91@example.com", "subject": "Hi",
                      "body": "x"},
            )  # fmt: skip
            failed = await eventually(
                lambda: client.get(f"/v1/messages/{refused.json()['id']}", headers=headers),
                lambda r: r.json()["status"] == "failed",
            )
            assert failed.json()["provider_error_code"] == "550"

        # Restarting keeps the same demo account and key
        with amnex_dev(data_dir, port):
            await eventually(lambda: ready(client), bool, timeout_s=60, interval_s=0.2)
            again = json.loads((data_dir / "dev.json").read_text())
            assert again["api_key"] == config["api_key"]
            assert again["account_id"] == config["account_id"]
            assert again["admin_token"] == config["admin_token"]
            listed = await client.get("/v1/messages", headers=headers)
            assert {m["id"] for m in listed.json()["data"]} >= {message_id}
            # The connector follows the simulator to its new port: SMS still goes out
            sms = await client.post(
                "/v1/messages",
                headers=headers,
                json={"channel": "sms", "to": "+14155550100", "body": "After a restart"},
            )
            assert sms.status_code == 201, sms.text
            await eventually(
                lambda: client.get(f"/v1/messages/{sms.json()['id']}", headers=headers),
                lambda r: r.json()["status"] == "delivered",
            )


@pytest.mark.slow
async def test_dev_delivers_an_sms_through_the_simulator_and_takes_replies(
    tmp_path: Path,
) -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]
    data_dir = tmp_path / "amnex-dev"
    base = f"http://127.0.0.1:{port}"

    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        with amnex_dev(data_dir, port):
            await eventually(lambda: ready(client), bool, timeout_s=60, interval_s=0.2)
            config = json.loads((data_dir / "dev.json").read_text())
            assert set(config["smsc"]) == {"host", "port", "system_id", "password"}
            assert oct((data_dir / "master.key").stat().st_mode & 0o777) == "0o600"
            headers = {"Authorization": f"Bearer {config['api_key']}"}

            # The README's first SMS: the demo account's default number, no `from`
            created = await client.post(
                "/v1/messages",
                headers=headers,
                json={"channel": "sms", "to": "+14155550100", "body": "Your code is 123456"},
            )
            assert created.status_code == 201, created.text
            assert (created.json()["segments"], created.json()["encoding"]) == (1, "GSM-7")

            async def status() -> Any:
                url = f"/v1/messages/{created.json()['id']}"
                return (await client.get(url, headers=headers)).json()

            message = await eventually(status, lambda m: m["status"] == "delivered")
            assert message["from"] == "+15005550006"
            seen = (await client.get("/_dev/smsc/messages")).json()["data"]
            assert [m["text"] for m in seen] == ["Your code is 123456"]

            # A reply injected at the simulator is stored before the call returns
            mo = await client.post(
                "/_dev/smsc/mo",
                json={"from": "+14155550100", "to": message["from"], "text": "Thanks!"},
            )
            assert mo.json() == {"stored": True, "command_status": "ESME_ROK"}
            inbound = await client.get(
                "/v1/messages", params={"direction": "inbound"}, headers=headers
            )
            assert [m["body"] for m in inbound.json()["data"]] == ["Thanks!"]
