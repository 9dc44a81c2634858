"""Interoperability: the whole system's SMS path against an independent SMSC (smpp34's server).

smpp34 is written apart from our codec, so a framing or field bug shared by our ESME and our
simulator cannot hide here: bind, submit (GSM-7, UCS-2, multi-part with UDH and with SAR),
receipts in TLV and text form, and inbound messages, single and multi-part.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import smpp34

from amnex.channels.smpp.pdu import Tag
from amnex.config import Settings
from amnex.db.engine import Database
from support import (
    AccountHandle,
    ApiServer,
    add_smpp_route,
    eventually,
    make_account,
    serve_system,
    wait_for_status,
    with_master_key,
)

NUMBER = "+13125550166"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Smsc:
    """smpp34's server, answering every submit_sm with an id and remembering it."""

    def __init__(self, server: smpp34.Server) -> None:
        self.server = server
        self.submits: list[Any] = []
        self.esmes: list[Any] = []
        self._ids = iter(range(1, 1_000_000))
        self._task = asyncio.create_task(self._serve())
        self.bound = asyncio.Event()

    async def _serve(self) -> None:
        while True:
            event = await self.server.next()
            if isinstance(event, smpp34.Esme):
                self.esmes.append(event)
                self.bound.set()
            elif isinstance(event, smpp34.SubmitSmEvent):
                self.submits.append(event)
                # Zero-padded ids: opaque text, the leading zeros matter.
                event.accept(f"{next(self._ids):010d}")

    async def receipt(self, message_id: str, *, tlv_form: bool, stat: str = "DELIVRD") -> int:
        esme = self.esmes[-1]
        text = (
            f"id:{message_id} sub:001 dlvrd:001 submit date:2611281405 "
            f"done date:2611281406 stat:{stat} err:000 text:"
        ).encode()
        tlvs = []
        if tlv_form:
            state = {"DELIVRD": 2, "UNDELIV": 5}[stat]
            tlvs = [
                smpp34.Tlv(Tag.RECEIPTED_MESSAGE_ID, message_id.encode() + b"\x00"),
                smpp34.Tlv(Tag.MESSAGE_STATE, bytes([state])),
            ]
            text = b""
        resp = await esme.deliver_sm(
            "14155550100", text, source_addr="13125550166", esm_class=0x04, tlvs=tlvs
        )
        return int(resp.command_status)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def smsc() -> AsyncIterator[tuple[Smsc, int]]:
    port = _free_port()
    server = smpp34.Server("127.0.0.1", port, system_id="SMPP34")
    await server.start()
    peer = Smsc(server)
    try:
        yield peer, port
    finally:
        await peer.stop()
        await server.stop()


@pytest.fixture
async def account(db: Database) -> AccountHandle:
    return await make_account(db, sms_number=NUMBER)


@contextlib.asynccontextmanager
async def system(
    settings: Settings, db: Database, port: int, **config: Any
) -> AsyncIterator[ApiServer]:
    settings = with_master_key(settings, route_cache_ttl_s=0.2)
    await add_smpp_route(db, settings, host="127.0.0.1", port=port, **config)
    async with serve_system(settings, db) as api:
        yield api


async def send(api: ApiServer, account: AccountHandle, to: str, body: str) -> str:
    response = await api.client.post(
        "/v1/messages", headers=account.headers, json={"channel": "sms", "to": to, "body": body}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def submits_for(peer: Smsc, count: int) -> list[Any]:
    async def probe() -> list[Any]:
        return list(peer.submits)

    submits = await eventually(probe, lambda s: len(s) >= count, timeout_s=10)
    return submits[:count]


async def test_gsm7_submit_and_tlv_receipt(
    settings: Settings, db: Database, account: AccountHandle, smsc: tuple[Smsc, int]
) -> None:
    peer, port = smsc
    async with system(settings, db, port) as api:
        message_id = await send(api, account, "+14155550100", "Code 1234 {ok}")
        [submit] = await submits_for(peer, 1)
        assert submit.destination_addr == "14155550100"
        assert submit.source_addr == "13125550166"
        assert submit.data_coding == 0
        assert submit.registered_delivery == 1
        # "{" and "}" are GSM-7 extension characters: escape + code, one octet each here
        assert submit.short_message == b"Code 1234 \x1b(ok\x1b)"
        await wait_for_status(api.client, account, message_id, {"sent"})
        assert await peer.receipt("0000000001", tlv_form=True) == 0
        await wait_for_status(api.client, account, message_id, {"delivered"})


@pytest.mark.parametrize("split", ["udh", "sar"])
async def test_multipart_ucs2_with_udh_or_sar_and_text_receipts(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    smsc: tuple[Smsc, int],
    split: str,
) -> None:
    peer, port = smsc
    text = "Ваш заказ готов к выдаче. Спасибо! " * 4  # 140 UCS-2 units → 3 parts
    async with system(settings, db, port, split=split) as api:
        message_id = await send(api, account, "+14155550100", text)
        parts = await submits_for(peer, 3)
        assert all(p.data_coding == 8 for p in parts)
        payloads = []
        for number, part in enumerate(parts, start=1):
            if split == "udh":
                assert part.esm_class & 0x40
                udh, body = part.short_message[:6], part.short_message[6:]
                assert udh[:3] == b"\x05\x00\x03"
                assert (udh[4], udh[5]) == (3, number)
            else:
                assert not part.esm_class & 0x40
                tlvs = {tlv.tag: tlv.value for tlv in part.tlvs}
                assert tlvs[Tag.SAR_TOTAL_SEGMENTS] == b"\x03"
                assert tlvs[Tag.SAR_SEGMENT_SEQNUM] == bytes([number])
                body = part.short_message
            payloads.append(body)
        assert b"".join(payloads).decode("utf-16-be") == text

        await wait_for_status(api.client, account, message_id, {"sent"})
        for n in (1, 2):
            assert await peer.receipt(f"{n:010d}", tlv_form=False) == 0
        message = await api.client.get(f"/v1/messages/{message_id}", headers=account.headers)
        assert message.json()["status"] == "sent"  # one part still owes its receipt
        # The carrier drops the leading zeros on the last one: still matched
        assert await peer.receipt("3", tlv_form=False) == 0
        message_out = await wait_for_status(api.client, account, message_id, {"delivered"})
        assert message_out["segments"] == 3


async def test_inbound_single_and_multipart_from_an_independent_smsc(
    settings: Settings, db: Database, account: AccountHandle, smsc: tuple[Smsc, int]
) -> None:
    peer, port = smsc
    async with system(settings, db, port) as api:
        async with asyncio.timeout(10):
            await peer.bound.wait()
        esme = peer.esmes[-1]
        resp = await esme.deliver_sm(
            "13125550166", b"Hi there", source_addr="14155550123", source_addr_ton=1
        )
        assert resp.command_status == 0
        # A two-part reply in UCS-2, second part first, with a UDH
        first, second = "Привет, ".encode("utf-16-be"), "мир!".encode("utf-16-be")
        for seq, body in ((2, second), (1, first)):
            udh = bytes((0x05, 0x00, 0x03, 0x42, 0x02, seq))
            resp = await esme.deliver_sm(
                "13125550166",
                udh + body,
                source_addr="14155550123",
                source_addr_ton=1,
                esm_class=0x40,
                data_coding=8,
            )
            assert resp.command_status == 0
        listed = await api.client.get(
            "/v1/messages", params={"direction": "inbound"}, headers=account.headers
        )
        bodies = sorted(m["body"] for m in listed.json()["data"])
        assert bodies == ["Hi there", "Привет, мир!"]
        multipart = next(m for m in listed.json()["data"] if m["segments"] == 2)
        assert multipart["encoding"] == "UCS-2"
        assert multipart["from"] == "+14155550123"
