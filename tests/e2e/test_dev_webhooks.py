"""`amnex dev` end to end with a real HTTP receiver on this machine: an endpoint registered
through the API gets an SMS's `message.queued`, `message.sent` and `message.delivered` in
order, and a STOP reply's `message.inbound` and `optout.created`, each verified with the
reference `standardwebhooks` library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from test_dev_mode import amnex_dev, ready

from amnex.webhooks import verify
from receivers import Receiver
from support import eventually, free_socket

RECIPIENT = "+14155550100"


@pytest.mark.slow
async def test_an_sms_and_a_stop_reach_a_local_receiver_in_order_and_verified(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    await receiver.start()
    with free_socket() as sock:
        port = sock.getsockname()[1]
    data_dir = tmp_path / "amnex-dev"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            with amnex_dev(data_dir, port):
                await eventually(lambda: ready(client), bool, timeout_s=60, interval_s=0.2)
                config = json.loads((data_dir / "dev.json").read_text())
                headers = {"Authorization": f"Bearer {config['api_key']}"}

                # Given an endpoint for every event type, on a receiver on this machine
                created = await client.post(
                    "/v1/webhook-endpoints",
                    headers=headers,
                    json={"url": receiver.url("/amnex")},
                )
                assert created.status_code == 201, created.text
                secret = created.json()["secret"]
                assert secret.startswith("whsec_")

                # When an SMS is sent, delivered, and the recipient answers STOP
                sent = await client.post(
                    "/v1/messages",
                    headers=headers,
                    json={"channel": "sms", "to": RECIPIENT, "body": "Your code is 123456"},
                )
                assert sent.status_code == 201, sent.text
                message_id = sent.json()["id"]

                async def types() -> list[str]:
                    return [json.loads(r.body)["type"] for r in receiver.requests]

                await eventually(types, lambda t: "message.delivered" in t, timeout_s=30)
                mo = await client.post(
                    "/_dev/smsc/mo",
                    json={"from": RECIPIENT, "to": sent.json()["from"], "text": "STOP"},
                )
                assert mo.json()["stored"] is True
                await eventually(
                    types,
                    lambda t: {"message.inbound", "optout.created"} <= set(t),
                    timeout_s=30,
                )
    finally:
        await receiver.close()

    # Then every request verifies with the reference library and with amnex's own helper
    payloads: list[dict[str, Any]] = []
    for request in receiver.requests:
        payload = Webhook(secret).verify(request.body, request.headers)
        assert verify(request.body, request.headers, secret) == payload
        payloads.append(payload)
    mine = [p["type"] for p in payloads if p["data"].get("id") == message_id]
    assert mine == ["message.queued", "message.sent", "message.delivered"]
    (inbound,) = [p for p in payloads if p["type"] == "message.inbound"]
    assert inbound["data"]["from"] == RECIPIENT
    (opt_out,) = [p for p in payloads if p["type"] == "optout.created"]
    assert opt_out["data"]["address"] == RECIPIENT
    # ... and none carries message content
    assert not any(b"123456" in r.body or b"STOP" in r.body for r in receiver.requests)
