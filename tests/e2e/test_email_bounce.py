"""End to end over real sockets: API → worker → SMTP sink (250, then a DSN) → bounce receiver →
`undelivered`, and the address suppressed for the next send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from amnex.accounts.models import Account
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.email.receiver import BounceReceiver
from amnex.simulators.smtp_sink import SmtpSink
from support import AccountHandle, eventually, free_socket, serve_system, wait_for_status

DOMAIN = "bounces.amnex.test"
POSTAL_ADDRESS = "Shop Example, 1 Main Street, Springfield, IL 62701"


@asynccontextmanager
async def bounce_receiver(settings: Settings, db: Database) -> AsyncIterator[BounceReceiver]:
    receiver = BounceReceiver(settings, db, port=0)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def allow_marketing_email(db: Database, account: AccountHandle) -> None:
    async with db.unit_of_work() as session:
        row = await session.get(Account, account.account_id)
        assert row is not None
        row.settings = {
            **row.settings,
            "compliance": {"postal_address": POSTAL_ADDRESS, "require_marketing_consent": False},
        }


async def test_a_bounced_email_ends_undelivered_and_its_address_is_suppressed(
    settings: Settings, db: Database, sink: SmtpSink, account: AccountHandle
) -> None:
    settings = settings.model_copy(update={"bounce_domain": DOMAIN})
    await allow_marketing_email(db, account)
    async with bounce_receiver(settings, db) as receiver, serve_system(settings, db) as api:
        sink.send_bounces_to(receiver.host, receiver.port)

        # Given an email to an address the recipient's server accepts, then bounces (…90)
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={
                "channel": "email",
                "to": "dave90@example.com",
                "subject": "Your order",
                "body": "It ships today.",
            },
        )
        assert response.status_code == 201, response.text
        message_id = response.json()["id"]

        # When the worker hands it over (250) and the server's DSN (5.1.1) comes back
        message = await wait_for_status(api.client, account, message_id, {"undelivered"})

        # Then the message is undelivered, with the bounce's reason
        assert message["error_code"] == "unknown_subscriber"
        assert message["provider_error_code"] == "5.1.1"
        assert message["delivered_at"] is not None
        assert message["failed_at"] is not None
        [received] = [m for m in sink.messages() if m["x_amnex_message_id"] == message_id]
        assert received["mail_from"] == f"bounces+{message_id}@{DOMAIN}"
        [bounce] = sink.bounces()
        assert (bounce["to"], bounce["status"]) == (received["mail_from"], "sent")
        events = (
            await api.client.get(f"/v1/messages/{message_id}/events", headers=account.headers)
        ).json()["data"]
        assert [e["status"] for e in events] == ["queued", "sending", "delivered", "undelivered"]
        assert events[-1]["error_code"] == "unknown_subscriber"

        # And the address is on the account's suppression list, with the bounce as evidence
        listed = await api.client.get(
            "/v1/opt-outs", headers=account.headers, params={"source": "bounce"}
        )
        [opt_out] = listed.json()["data"]
        assert (opt_out["channel"], opt_out["address"]) == ("email", "dave90@example.com")
        assert opt_out["evidence"]["message_id"] == message_id
        assert opt_out["evidence"]["status"] == "5.1.1"

        # And the next email to it, transactional or marketing, is refused at accept
        for extra in (
            {},
            {
                "category": "marketing",
                "body": f"20% off.\n{POSTAL_ADDRESS}\nUnsubscribe: {{{{unsubscribe_url}}}}",
            },
        ):
            refused = await api.client.post(
                "/v1/messages",
                headers=account.headers,
                json={
                    "channel": "email",
                    "to": "dave90@example.com",
                    "subject": "Again",
                    "body": "Hello again.",
                    **extra,
                },
            )
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "recipient_opted_out"

        metrics = (await api.client.get("/metrics")).text
    assert 'amnex_email_bounces_total{kind="hard"}' in metrics


@contextmanager
def amnex_dev(data_dir: Path, port: int) -> Iterator[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "amnex", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
async def test_amnex_dev_bounces_mail_for_90_and_suppresses_the_address(tmp_path: Path) -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]
    data_dir = tmp_path / "amnex-dev"

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        with amnex_dev(data_dir, port):
            await eventually(lambda: ready(client), bool, timeout_s=60, interval_s=0.2)
            config = json.loads((data_dir / "dev.json").read_text())
            headers = {"Authorization": f"Bearer {config['api_key']}"}
            email = {"channel": "email", "to": "user90@example.com", "subject": "Hi", "body": "x"}

            created = await client.post("/v1/messages", headers=headers, json=email)
            assert created.status_code == 201, created.text

            async def status() -> Any:
                url = f"/v1/messages/{created.json()['id']}"
                return (await client.get(url, headers=headers)).json()

            message = await eventually(status, lambda m: m["status"] == "undelivered")
            assert message["error_code"] == "unknown_subscriber"
            again = await client.post("/v1/messages", headers=headers, json=email)
            assert again.status_code == 422, again.text
            assert again.json()["code"] == "recipient_opted_out"
