"""Simulators: the SMPP SMSC simulator, driven over loopback by smpp34 and a raw codec client.

smpp34 is the independent peer (a bug shared by our codec and our simulator cannot hide
behind it). It does not surface a failed bind_resp's status (it only times out) nor let a
test withhold deliver_sm_resp, so those cases use a small client built on our PDU codec.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import smpp34

from amnex.channels.smpp import pdu
from amnex.simulators.smsc import NoReceiverBound, SmscSimulator, outcome_digits
from support import StartSmsc

TIMEOUT_S = 5.0


@pytest.fixture
async def bind() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Bind smpp34 clients; every one is unbound and stopped afterwards."""
    clients: list[tuple[Any, Any]] = []

    async def connect(smsc: SmscSimulator, bind_type: str = "TRX") -> Any:
        client = smpp34.Client(smsc.host, smsc.port, "amnex", "secret", bind_type=bind_type)
        session = await asyncio.wait_for(client.connect(), TIMEOUT_S)
        clients.append((client, session))
        return session

    yield connect
    for client, session in clients:
        await session.unbind()
        client.stop()
    if clients:
        # smpp34's core resolves Python futures from its own thread after stop(); give it a
        # moment while this test's loop is open, or it reports "Event loop is closed" later.
        await asyncio.sleep(0.05)


class RawClient:
    """An ESME built on our codec, for what smpp34 cannot show or cannot withhold."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._sequence = 0

    @classmethod
    async def connect(cls, smsc: SmscSimulator) -> RawClient:
        reader, writer = await asyncio.open_connection(smsc.host, smsc.port)
        return cls(reader, writer)

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    async def send(self, message: pdu.Pdu) -> None:
        if not message.sequence_number:
            message.sequence_number = self.next_sequence()
        self.writer.write(pdu.encode(message))
        await self.writer.drain()

    async def read(self, timeout_s: float = TIMEOUT_S) -> pdu.Pdu:
        async with asyncio.timeout(timeout_s):
            head = await self.reader.readexactly(pdu.HEADER_SIZE)
            header = pdu.read_header(head)
            assert header is not None
            body = await self.reader.readexactly(header.command_length - pdu.HEADER_SIZE)
        return pdu.decode(head + body)

    async def request(self, message: pdu.Pdu) -> pdu.Pdu:
        await self.send(message)
        return await self.read()

    async def bind(self, system_id: str = "amnex", password: str = "secret") -> pdu.Pdu:  # noqa: S107
        return await self.request(pdu.BindTransceiver(system_id=system_id, password=password))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[SmscSimulator], Awaitable[RawClient]]]:
    opened: list[RawClient] = []

    async def connect(smsc: SmscSimulator) -> RawClient:
        client = await RawClient.connect(smsc)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()


def tlv_map(event: Any) -> dict[int, bytes]:
    return {tlv.tag: bytes(tlv.value) for tlv in event.tlvs}


def test_outcome_digits() -> None:
    assert outcome_digits("4915100000090") == "90"
    assert outcome_digits("+4915100000001") == "01"
    assert outcome_digits("Shop") is None
    assert outcome_digits("9") is None


# -- binds ------------------------------------------------------------------------------------


async def test_smpp34_binds_every_kind_several_times_per_system_id(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    for bind_type in ("TX", "RX", "TRX", "TRX"):
        await bind(smsc, bind_type)
    assert smsc.bound_sessions == 4


async def test_wrong_credentials_are_refused_with_the_precise_status(
    smsc: SmscSimulator, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    client = await raw(smsc)
    wrong_system = await client.bind(system_id="someone")
    assert wrong_system.command_status == pdu.CommandStatus.ESME_RINVSYSID
    wrong_password = await client.bind(password="guess")
    assert wrong_password.command_status == pdu.CommandStatus.ESME_RINVPASWD
    assert smsc.bound_sessions == 0
    # The connection stays usable: the right credentials then bind.
    ok = await client.bind()
    assert isinstance(ok, pdu.BindTransceiverResp)
    assert ok.command_status == pdu.CommandStatus.ESME_ROK
    assert smsc.bound_sessions == 1
    again = await client.bind()
    assert again.command_status == pdu.CommandStatus.ESME_RALYBND


async def test_session_rules_before_and_after_bind(
    smsc: SmscSimulator, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    client = await raw(smsc)
    early = await client.request(pdu.SubmitSm(destination_addr="4915100000001"))
    assert isinstance(early, pdu.SubmitSmResp)
    assert early.command_status == pdu.CommandStatus.ESME_RINVBNDSTS
    link = await client.request(pdu.EnquireLink())
    assert isinstance(link, pdu.EnquireLinkResp)
    await client.bind()
    unknown = await client.request(pdu.QuerySm(message_id="0000000001"))
    assert isinstance(unknown, pdu.GenericNack)
    assert unknown.command_status == pdu.CommandStatus.ESME_RINVCMDID
    bye = await client.request(pdu.Unbind())
    assert isinstance(bye, pdu.UnbindResp)
    assert await client.reader.read() == b""  # the simulator closed the connection


async def test_malformed_frame_gets_generic_nack_with_its_sequence(
    smsc: SmscSimulator, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    client = await raw(smsc)
    await client.bind()
    # A submit_sm whose body stops after service_type: truncated fields.
    body = b"\0"
    frame = (
        (16 + len(body)).to_bytes(4, "big")
        + int(pdu.CommandId.SUBMIT_SM).to_bytes(4, "big")
        + bytes(4)
        + (77).to_bytes(4, "big")
        + body
    )
    client.writer.write(frame)
    nack = await client.read()
    assert isinstance(nack, pdu.GenericNack)
    assert nack.sequence_number == 77
    assert nack.command_status != pdu.CommandStatus.ESME_ROK
    # The stream is still framed: the session goes on.
    assert isinstance(await client.request(pdu.EnquireLink()), pdu.EnquireLinkResp)


# -- submit_sm --------------------------------------------------------------------------------


async def test_gsm7_and_ucs2_are_accepted_and_stored_decoded(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    # Proper GSM-7 octets (unpacked): € is ESC 0x65, { is ESC 0x28.
    gsm7 = b"Price: 5\x1be \x1b(ok\x1b)"
    gsm = await session.submit_sm("4915100000001", gsm7, source_addr="Shop")
    ucs2 = await session.submit_sm(
        "4915100000002", "Привет 👋".encode("utf-16-be"), source_addr="Shop", data_coding=8
    )
    assert gsm.is_success
    assert ucs2.is_success
    assert len(gsm.message_id) == 10
    assert gsm.message_id.startswith("0")
    assert gsm.message_id != ucs2.message_id
    stored = smsc.messages()
    assert [m["text"] for m in stored] == ["Price: 5€ {ok}", "Привет 👋"]
    assert stored[-1]["message_id"] == ucs2.message_id
    assert stored[-1]["system_id"] == "amnex"
    assert stored[-1]["source"] == "Shop"
    assert stored[-1]["destination"] == "4915100000002"
    assert stored[-1]["data_coding"] == 8
    assert stored[-1]["udh"] is None
    assert stored[-1]["received_at"].endswith("+00:00")


async def test_concatenated_part_keeps_its_udh(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    udh = bytes((0x05, 0x00, 0x03, 0x2A, 0x02, 0x01))
    resp = await session.submit_sm("4915100000003", udh + b"first half", esm_class=0x40)
    assert resp.is_success
    (stored,) = smsc.messages()
    assert stored["text"] == "first half"
    assert stored["udh"] == {"raw": udh.hex(), "reference": 0x2A, "total": 2, "sequence": 1}


async def test_receipt_carries_tlvs_and_appendix_b_text(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    resp = await session.submit_sm(
        "4915100000001",
        b"Your code is 123456 - do not share",
        source_addr="Shop",
        registered_delivery=1,
    )
    event = await asyncio.wait_for(session.next(), TIMEOUT_S)
    assert isinstance(event, smpp34.DeliverSmEvent)
    assert event.esm_class == 0x04
    assert event.source_addr == "4915100000001"
    assert event.destination_addr == "Shop"
    tlvs = tlv_map(event)
    assert tlvs[pdu.Tag.RECEIPTED_MESSAGE_ID] == resp.message_id.encode() + b"\0"
    assert tlvs[pdu.Tag.MESSAGE_STATE] == b"\x02"
    body = bytes(event.short_message).decode("ascii")
    assert body.startswith(f"id:{resp.message_id} sub:001 dlvrd:001 submit date:")
    assert " stat:DELIVRD err:000 text:Your code is 123456 " in body + " "
    assert body.endswith("text:Your code is 123456 ")  # the first 20 characters


async def test_90_gives_an_undeliverable_receipt(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    resp = await session.submit_sm("4915100000090", b"hi", registered_delivery=1)
    assert resp.is_success
    event = await asyncio.wait_for(session.next(), TIMEOUT_S)
    tlvs = tlv_map(event)
    assert tlvs[pdu.Tag.RECEIPTED_MESSAGE_ID] == resp.message_id.encode() + b"\0"
    assert tlvs[pdu.Tag.MESSAGE_STATE] == b"\x05"
    assert b"dlvrd:000" in bytes(event.short_message)
    assert b"stat:UNDELIV err:001" in bytes(event.short_message)


async def test_91_is_refused_and_not_stored(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    resp = await session.submit_sm("4915100000091", b"hi")
    assert not resp.is_success
    assert resp.command_status == pdu.CommandStatus.ESME_RSUBMITFAIL
    assert smsc.messages() == []


async def test_92_is_throttled_once_then_accepted(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    first = await session.submit_sm("4915100000092", b"hi")
    assert first.command_status == pdu.CommandStatus.ESME_RTHROTTLED
    second = await session.submit_sm("4915100000092", b"hi")
    assert second.is_success
    assert [m["message_id"] for m in smsc.messages()] == [second.message_id]
    smsc.clear()
    again = await session.submit_sm("4915100000092", b"hi")
    assert again.command_status == pdu.CommandStatus.ESME_RTHROTTLED


async def test_throttle_next_applies_to_any_destination(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    smsc.throttle_next(2)
    statuses = [(await session.submit_sm("4915100000001", b"x")).command_status for _ in range(3)]
    assert statuses == [pdu.CommandStatus.ESME_RTHROTTLED] * 2 + [pdu.CommandStatus.ESME_ROK]


async def test_93_is_never_answered_and_94_never_receipted(
    smsc: SmscSimulator, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    client = await raw(smsc)
    await client.bind()
    await client.send(pdu.SubmitSm(destination_addr="4915100000093", registered_delivery=1))
    await client.send(pdu.SubmitSm(destination_addr="4915100000094", registered_delivery=1))
    answered = await client.read()
    assert isinstance(answered, pdu.SubmitSmResp)
    assert answered.sequence_number == 3  # the 94 one (the bind was 1, the 93 one 2)
    with pytest.raises(TimeoutError):
        await client.read(timeout_s=0.2)  # neither a 93 answer nor a 94 receipt
    assert [m["destination"] for m in smsc.messages()] == ["4915100000093", "4915100000094"]


async def test_95_receipt_waits_for_the_slow_delay(
    start_smsc: StartSmsc, bind: Callable[..., Awaitable[Any]]
) -> None:
    smsc = await start_smsc(slow_receipt_delay_s=0.3)
    session = await bind(smsc)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    await session.submit_sm("4915100000095", b"hi", registered_delivery=1)
    await asyncio.wait_for(session.next(), TIMEOUT_S)
    assert loop.time() - sent_at >= 0.29


async def test_unanswered_receipt_is_offered_again_after_a_disconnect(
    smsc: SmscSimulator,
    raw: Callable[[SmscSimulator], Awaitable[RawClient]],
    bind: Callable[..., Awaitable[Any]],
) -> None:
    client = await raw(smsc)
    await client.bind()
    sent = await client.request(
        pdu.SubmitSm(destination_addr="4915100000001", registered_delivery=1)
    )
    assert isinstance(sent, pdu.SubmitSmResp)
    first = await client.read()
    assert isinstance(first, pdu.DeliverSm)  # the receipt, deliberately not answered
    smsc.disconnect_all()
    assert await client.reader.read() == b""
    session = await bind(smsc, "RX")
    event = await asyncio.wait_for(session.next(), TIMEOUT_S)
    assert tlv_map(event)[pdu.Tag.RECEIPTED_MESSAGE_ID] == sent.message_id.encode() + b"\0"


async def test_messages_are_bounded(
    start_smsc: StartSmsc, bind: Callable[..., Awaitable[Any]]
) -> None:
    smsc = await start_smsc(max_stored=2)
    session = await bind(smsc)
    ids = [(await session.submit_sm("4915100000001", b"x")).message_id for _ in range(3)]
    assert [m["message_id"] for m in smsc.messages()] == ids[1:]


# -- MO ---------------------------------------------------------------------------------------


async def test_injected_mo_reaches_the_esme(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    session = await bind(smsc)
    status = await asyncio.wait_for(smsc.inject_mo("4915100000001", "Shop", "STOP"), TIMEOUT_S)
    assert status == pdu.CommandStatus.ESME_ROK
    event = await asyncio.wait_for(session.next(), TIMEOUT_S)
    assert event.esm_class == 0
    assert event.source_addr == "4915100000001"
    assert event.destination_addr == "Shop"
    assert event.data_coding == 0
    assert bytes(event.short_message) == b"STOP"

    await smsc.inject_mo("4915100000001", "Shop", "Спасибо")
    event = await asyncio.wait_for(session.next(), TIMEOUT_S)
    assert event.data_coding == 8
    assert bytes(event.short_message).decode("utf-16-be") == "Спасибо"


async def test_inject_mo_without_a_receiver_fails_clearly(
    smsc: SmscSimulator, bind: Callable[..., Awaitable[Any]]
) -> None:
    await bind(smsc, "TX")
    with pytest.raises(NoReceiverBound, match="no receiver"):
        await smsc.inject_mo("4915100000001", "Shop", "STOP")


# -- response_delay_s -------------------------------------------------------------------------


async def test_response_delay_holds_every_submit_sm_resp_and_keeps_their_order(
    start_smsc: StartSmsc, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    # Given an SMSC that answers submit_sm 0.2 s after it arrives
    delay_s = 0.2
    smsc = await start_smsc(response_delay_s=delay_s)
    client = await raw(smsc)
    await client.bind()  # bind_resp is not delayed
    loop = asyncio.get_running_loop()
    # When three submit_sm (accepted, refused, accepted) and an enquire_link go out
    sent_at: dict[int, float] = {}
    for destination in ("4915100000001", "4915100000091", "4915100000002"):
        message = pdu.SubmitSm(destination_addr=destination)
        message.sequence_number = client.next_sequence()
        sent_at[message.sequence_number] = loop.time()
        await client.send(message)
    await client.send(pdu.EnquireLink())
    # Then the enquire_link is answered at once, ahead of the held responses
    link = await client.read()
    assert isinstance(link, pdu.EnquireLinkResp)
    assert loop.time() - min(sent_at.values()) < delay_s
    # And every submit_sm_resp, error or not, comes at least delay_s after its submit, in order
    responses = [await client.read() for _ in sent_at]
    arrived_at = loop.time()
    assert [r.sequence_number for r in responses] == list(sent_at)
    assert all(isinstance(r, pdu.SubmitSmResp) for r in responses)
    assert [r.command_status for r in responses] == [
        pdu.CommandStatus.ESME_ROK,
        pdu.CommandStatus.ESME_RSUBMITFAIL,
        pdu.CommandStatus.ESME_ROK,
    ]
    assert arrived_at - max(sent_at.values()) >= delay_s


async def test_response_delay_applies_to_each_submit_from_its_own_arrival(
    start_smsc: StartSmsc, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    # Given an SMSC with a 0.15 s answer latency
    delay_s = 0.15
    smsc = await start_smsc(response_delay_s=delay_s)
    client = await raw(smsc)
    await client.bind()
    loop = asyncio.get_running_loop()
    # When a second submit_sm follows the first by 0.1 s
    first_at = loop.time()
    await client.send(pdu.SubmitSm(destination_addr="4915100000001"))
    await asyncio.sleep(0.1)
    second_at = loop.time()
    await client.send(pdu.SubmitSm(destination_addr="4915100000002"))
    # Then each answer waits for its own delay, not for the batch's
    first = await client.read()
    first_arrived = loop.time()
    second = await client.read()
    second_arrived = loop.time()
    assert (first.sequence_number, second.sequence_number) == (2, 3)
    assert first_arrived - first_at >= delay_s
    assert first_arrived < second_at + delay_s  # not held back until the second is due
    assert second_arrived - second_at >= delay_s


def test_response_delay_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="response_delay_s"):
        SmscSimulator(response_delay_s=-0.1)


# -- receipts built from the raw submit_sm, and counters ---------------------------------------


async def test_receipt_swaps_addresses_with_their_ton_and_npi_and_counters_follow(
    smsc: SmscSimulator, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    client = await raw(smsc)
    await client.bind()
    resp = await client.request(
        pdu.SubmitSm(
            source_addr_ton=5,
            source_addr_npi=0,
            source_addr="Shop",
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr="4915100000001",
            registered_delivery=1,
            data_coding=8,
            short_message="Grüße €uro — ok".encode("utf-16-be"),
        )
    )
    assert isinstance(resp, pdu.SubmitSmResp)
    receipt = await client.read()
    assert isinstance(receipt, pdu.DeliverSm)
    assert (receipt.source_addr_ton, receipt.source_addr_npi, receipt.source_addr) == (
        1,
        1,
        "4915100000001",
    )
    assert (receipt.dest_addr_ton, receipt.dest_addr_npi, receipt.destination_addr) == (
        5,
        0,
        "Shop",
    )
    assert (receipt.esm_class, receipt.data_coding, receipt.registered_delivery) == (4, 0, 0)
    assert pdu.get_cstring_tlv(receipt.tlvs, pdu.Tag.RECEIPTED_MESSAGE_ID) == resp.message_id
    assert pdu.get_int_tlv(receipt.tlvs, pdu.Tag.MESSAGE_STATE) == 2
    # GSM-7 octets, unpacked: € is ESC 0x65; '—' is not in GSM-7 and becomes '?'.
    assert receipt.short_message.endswith(b"text:Gr\x7e\x1e" + b"e \x1beuro ? ok")
    assert smsc.submitted_count == 1
    assert smsc.receipts_sent == 1
    assert smsc.receipts_acknowledged == 0
    await client.send(pdu.DeliverSmResp(sequence_number=receipt.sequence_number))
    await client.request(pdu.EnquireLink())  # the deliver_sm_resp has been read by now
    assert smsc.receipts_acknowledged == 1


async def test_message_payload_submit_is_stored_and_receipted_from_its_tlv(
    smsc: SmscSimulator, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    client = await raw(smsc)
    await client.bind()
    submit = pdu.SubmitSm(destination_addr="4915100000001", registered_delivery=1)
    submit.tlvs[pdu.Tag.MESSAGE_PAYLOAD] = b"A long text carried in the payload TLV"
    resp = await client.request(submit)
    assert isinstance(resp, pdu.SubmitSmResp)
    assert resp.command_status == pdu.CommandStatus.ESME_ROK
    (stored,) = smsc.messages()
    assert stored["text"] == "A long text carried in the payload TLV"
    receipt = await client.read()
    assert isinstance(receipt, pdu.DeliverSm)
    assert receipt.short_message.endswith(b"text:A long text carried ")  # the first 20 characters


async def test_bad_tlv_stream_is_nacked_and_not_stored(
    smsc: SmscSimulator, raw: Callable[[SmscSimulator], Awaitable[RawClient]]
) -> None:
    client = await raw(smsc)
    await client.bind()
    frame = bytearray(
        pdu.encode(pdu.SubmitSm(sequence_number=42, destination_addr="4915100000001"))
    )
    frame += b"\x04\x24"  # two octets after short_message: too few for a TLV header
    frame[0:4] = len(frame).to_bytes(4, "big")
    client.writer.write(bytes(frame))
    nack = await client.read()
    assert isinstance(nack, pdu.GenericNack)
    assert nack.sequence_number == 42
    assert nack.command_status == pdu.CommandStatus.ESME_RINVOPTPARSTREAM
    assert smsc.messages() == []
    assert smsc.submitted_count == 0
