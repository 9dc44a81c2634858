"""`amnex dev` end to end: a recipient texts "Stop texting me please", is confirmed once and
suppressed; STOP again sends nothing; START re-enables them, confirmed once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_dev_mode import amnex_dev, ready

from support import eventually, free_socket

RECIPIENT = "+14155550177"
OPT_OUT_CONFIRMATION = (
    "Amnex Demo: You have been unsubscribed and will receive no more messages. "
    "Reply START to resubscribe."
)
OPT_IN_CONFIRMATION = (
    "Amnex Demo: You are subscribed again. Msg frequency varies. Msg&data rates may apply. "
    "Reply HELP for help, STOP to opt out."
)


class Dev:
    """The dev server's API and simulator endpoints, as a user drives them."""

    def __init__(self, client: httpx.AsyncClient, api_key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def send(self, body: str) -> httpx.Response:
        return await self.client.post(
            "/v1/messages",
            headers=self.headers,
            json={"channel": "sms", "to": RECIPIENT, "body": body},
        )

    async def message(self, message_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/messages/{message_id}", headers=self.headers)
        found: dict[str, Any] = response.json()
        return found

    async def delivered(self, message_id: str) -> dict[str, Any]:
        return await eventually(
            lambda: self.message(message_id), lambda m: m["status"] == "delivered"
        )

    async def reply(self, sender_number: str, text: str) -> None:
        """The recipient texts the account's number; returns once Amnex stored it."""
        mo = await self.client.post(
            "/_dev/smsc/mo", json={"from": RECIPIENT, "to": sender_number, "text": text}
        )
        assert mo.json() == {"stored": True, "command_status": "ESME_ROK"}, mo.text

    async def listed(self, direction: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/v1/messages",
            params={"direction": direction, "limit": 100},
            headers=self.headers,
        )
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def keyword_replies(self) -> list[dict[str, Any]]:
        """Amnex's own replies to keywords: outbound messages answering an inbound one."""
        return [
            m
            for m in await self.listed("outbound")
            if (m["metadata"] or {}).get("in_reply_to") is not None
        ]

    async def at_the_handset(self) -> list[str]:
        """The texts the SMSC simulator received for the recipient, oldest first."""
        seen = (await self.client.get("/_dev/smsc/messages")).json()["data"]
        return [m["text"] for m in seen if m["destination"].lstrip("+") == RECIPIENT[1:]]


@pytest.mark.slow
async def test_a_free_text_stop_is_honoured_and_confirmed_once_and_start_lifts_it(
    tmp_path: Path,
) -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]
    data_dir = tmp_path / "amnex-dev"

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        with amnex_dev(data_dir, port):
            await eventually(lambda: ready(client), bool, timeout_s=60, interval_s=0.2)
            config = json.loads((data_dir / "dev.json").read_text())
            dev = Dev(client, config["api_key"])

            # Given a recipient who got an SMS from the demo account
            first = await dev.send("Your order has shipped")
            assert first.status_code == 201, first.text
            sender_number = (await dev.delivered(first.json()["id"]))["from"]

            # When they reply in their own words
            await dev.reply(sender_number, "Stop texting me please")

            # Then the next send to them is refused at accept, and nothing is stored
            refused = await dev.send("Your order was delivered")
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "recipient_opted_out"

            # and one confirmation went out to them, from the number they wrote to
            [confirmation] = await dev.keyword_replies()
            assert (confirmation["from"], confirmation["to"]) == (sender_number, RECIPIENT)
            assert confirmation["body"] == OPT_OUT_CONFIRMATION
            await dev.delivered(confirmation["id"])
            assert await dev.at_the_handset() == ["Your order has shipped", OPT_OUT_CONFIRMATION]

            # When they send STOP as well
            await dev.reply(sender_number, "STOP")
            # Then nothing new is queued for them (a reply is queued with the inbound message)
            assert [m["id"] for m in await dev.keyword_replies()] == [confirmation["id"]]

            # When they text START
            await dev.reply(sender_number, "START")

            # Then one opt-in confirmation goes out, and they can be texted again
            replies = await dev.keyword_replies()
            assert len(replies) == 2, replies
            [opt_in] = [m for m in replies if m["id"] != confirmation["id"]]
            assert (opt_in["from"], opt_in["to"], opt_in["body"]) == (
                sender_number, RECIPIENT, OPT_IN_CONFIRMATION,
            )  # fmt: skip
            await dev.delivered(opt_in["id"])
            again = await dev.send("Back in stock")
            assert again.status_code == 201, again.text
            await dev.delivered(again.json()["id"])
            # Everything queued before "Back in stock" has reached the SMSC by now, in order
            assert await dev.at_the_handset() == [
                "Your order has shipped", OPT_OUT_CONFIRMATION, OPT_IN_CONFIRMATION,
                "Back in stock",
            ]  # fmt: skip

            # And the replies are listed as inbound messages, with what each asked for
            inbound = await dev.listed("inbound")
            assert sorted((m["body"], m["metadata"]["reply_intent"]) for m in inbound) == [
                ("START", "opt_in"), ("STOP", "opt_out"), ("Stop texting me please", "opt_out"),
            ]  # fmt: skip
            assert {(m["from"], m["to"], m["direction"]) for m in inbound} == {
                (RECIPIENT, sender_number, "inbound"),
            }
            in_reply_to = {m["metadata"]["in_reply_to"] for m in replies}
            by_body = {m["body"]: m["id"] for m in inbound}
            assert in_reply_to == {by_body["Stop texting me please"], by_body["START"]}
