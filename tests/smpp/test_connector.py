"""SMPP connector: binds, reconnects, encodings, throttling and throughput over real sockets.

The peer is `SmscSimulator` (the `amnex dev` contract). Where a test needs the SMSC to do
something the simulator cannot — see the unbind, answer with generic_nack or a malformed
response — a small scripted SMSC on asyncio streams speaks through our codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pydantic
import pytest
from prometheus_client import REGISTRY

from amnex.channels.base import PermanentDeliveryError, TemporaryDeliveryError
from amnex.channels.smpp import pdu
from amnex.channels.smpp.connector import (
    SmppConnector,
    SmppConnectorConfig,
    SubmittedParts,
    ThroughputLimiter,
    mask_address,
    reconnect_delay_s,
    source_address_fields,
)
from amnex.simulators.smsc import SmscSimulator
from support import eventually

T = TypeVar("T")

MakeConnector = Callable[..., Awaitable[SmppConnector]]

LONG_GSM = "".join(chr(ord("a") + i % 26) for i in range(200))  # 2 parts of <= 153 septets


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


class Delivered:
    """An on_deliver handler that keeps what it is given and acknowledges it."""

    def __init__(self) -> None:
        self.pdus: list[pdu.DeliverSm | pdu.DataSm] = []

    async def __call__(self, received: pdu.DeliverSm | pdu.DataSm) -> pdu.CommandStatus:
        self.pdus.append(received)
        return pdu.CommandStatus.ESME_ROK


@pytest.fixture
def delivered() -> Delivered:
    return Delivered()


def make_config(port: int = 2775, **overrides: Any) -> SmppConnectorConfig:
    options: dict[str, Any] = {
        "id": "conn_" + secrets.token_hex(4),  # fresh metric labels per test
        "name": "Test carrier",
        "host": "127.0.0.1",
        "port": port,
        "system_id": "amnex",
        "password": "secret",
        "response_timeout_s": 2.0,
        "reconnect_min_s": 0.01,
        "reconnect_max_s": 0.05,
        "throttle_backoff_s": 0.01,
    }
    options.update(overrides)
    return SmppConnectorConfig(**options)


@pytest.fixture
async def make_connector(delivered: Delivered) -> AsyncIterator[MakeConnector]:
    """Start connectors against a port with test timings; every one is closed afterwards."""
    connectors: list[SmppConnector] = []

    async def make(port: int, *, redis_url: str | None = None, **overrides: Any) -> SmppConnector:
        connector = SmppConnector(
            make_config(port, **overrides),
            on_deliver=delivered,
            redis_url=redis_url,
            rng=random.Random(7),
        )
        connectors.append(connector)
        await connector.start()
        return connector

    yield make
    for connector in connectors:
        await connector.close()


async def up(make: MakeConnector, smsc: SmscSimulator, **overrides: Any) -> SmppConnector:
    connector = await make(smsc.port, **overrides)
    assert await connector.wait_up(5.0)
    return connector


def metric(name: str, connector: SmppConnector, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"connector": connector.config.id, **labels})
    return value or 0.0


def poll(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A probe for `eventually` that reads a plain value."""

    async def probe() -> T:
        return read()

    return probe


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spy_submits(
    smsc: SmscSimulator, monkeypatch: pytest.MonkeyPatch, answer: Callable[[int], int] | None = None
) -> list[pdu.SubmitSm]:
    """Record every submit_sm as decoded (the simulator keeps no TLVs); optionally refuse some.

    `answer(n)` gives the command_status for the n-th submit_sm (1-based); ESME_ROK lets the
    simulator handle it as usual.
    """
    seen: list[pdu.SubmitSm] = []
    original = smsc._submit

    def submit(system_id: str, submit_sm: pdu.SubmitSm) -> bytes | None:
        seen.append(submit_sm)
        status = answer(len(seen)) if answer else pdu.CommandStatus.ESME_ROK
        if status != pdu.CommandStatus.ESME_ROK:
            resp = pdu.SubmitSmResp(sequence_number=submit_sm.sequence_number)
            resp.command_status = status
            return pdu.encode(resp)
        return original(system_id, submit_sm)

    monkeypatch.setattr(smsc, "_submit", submit)
    return seen


# ---------------------------------------------------------------------------------------------
# Binds and supervision


async def test_two_binds_are_both_bound(smsc: SmscSimulator, make_connector: MakeConnector) -> None:
    # Given a connector configured with two binds
    connector = await make_connector(smsc.port, binds=2)
    # Then the SMSC sees two bound sessions, and the connector counts both
    await eventually(poll(lambda: smsc.bound_sessions), lambda n: n == 2, timeout_s=5)
    await eventually(poll(lambda: connector.bound_sessions), lambda n: n == 2, timeout_s=5)
    assert connector.is_up
    assert metric("amnex_smpp_binds_total", connector) == 2
    assert metric("amnex_smpp_bound_sessions", connector) == 2


async def test_start_returns_at_once_and_submit_without_bind_is_unavailable(
    make_connector: MakeConnector,
) -> None:
    # Given a connector whose SMSC is not listening
    connector = await make_connector(closed_port(), response_timeout_s=0.2)
    # Then start() has returned without a bind, and the slot keeps trying
    assert not connector.is_up
    await eventually(
        poll(lambda: metric("amnex_smpp_bind_failures_total", connector)), lambda n: n >= 2
    )
    # And a submit waits response_timeout_s for a bind, then gives up retryably
    with pytest.raises(TemporaryDeliveryError) as caught:
        await connector.submit_text(source="Amnex", destination="4915112345678", text="hi")
    assert caught.value.code == "connection_unavailable"
    assert caught.value.retry_after_s is not None
    assert not await connector.wait_up(0.05)


async def test_reconnects_after_the_smsc_drops_every_connection(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    # Given two bound sessions
    connector = await up(make_connector, smsc, binds=2)
    await eventually(poll(lambda: connector.bound_sessions), lambda n: n == 2)
    # When the SMSC cuts both connections
    smsc.disconnect_all()
    # Then both slots notice and bind again (fast backoff in this test)
    await eventually(
        poll(lambda: metric("amnex_smpp_disconnects_total", connector)), lambda n: n >= 2
    )
    await eventually(poll(lambda: metric("amnex_smpp_binds_total", connector)), lambda n: n >= 4)
    await eventually(poll(lambda: smsc.bound_sessions), lambda n: n == 2)
    # And messages flow again
    sent = await connector.submit_text(source="Amnex", destination="4915112345678", text="back")
    assert len(sent.provider_message_ids) == 1


async def test_refused_bind_keeps_retrying_without_logging_the_password(
    smsc: SmscSimulator, make_connector: MakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="amnex.channels.smpp")
    # Given a connector with a password the SMSC refuses
    connector = await make_connector(smsc.port, password="Pw9xQz7k")
    # Then it counts failed binds and keeps trying, never bound
    await eventually(
        poll(lambda: metric("amnex_smpp_bind_failures_total", connector)), lambda n: n >= 3
    )
    assert not connector.is_up
    assert smsc.bound_sessions == 0
    # When the SMSC starts accepting that password, the same connector binds
    smsc.password = "Pw9xQz7k"
    assert await connector.wait_up(5.0)
    assert "ESME_RINVPASWD" in caplog.text
    assert "Pw9xQz7k" not in caplog.text


async def test_close_unbinds_every_session_and_stops_reconnecting(
    make_connector: MakeConnector,
) -> None:
    unbound: list[bool] = []

    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        request = await peer.read(timeout_s=10)
        unbound.append(isinstance(request, pdu.Unbind))
        peer.send(pdu.UnbindResp(request.sequence_number))

    async with scripted_smsc(script) as smsc:
        # Given two bound sessions
        connector = await make_connector(smsc.port, binds=2)
        await eventually(poll(lambda: connector.bound_sessions), lambda n: n == 2)
        # When the connector closes
        await connector.close()
        # Then the SMSC got an unbind on each connection, and nothing reconnected
        await eventually(poll(lambda: len(unbound)), lambda n: n == 2)
        assert unbound == [True, True]
        assert smsc.connections == 2
        assert connector.bound_sessions == 0
        assert not connector.is_up
        with pytest.raises(TemporaryDeliveryError) as caught:
            await connector.submit_text(source="Amnex", destination="4915112345678", text="x")
        assert caught.value.code == "connection_unavailable"


async def test_submits_go_to_the_least_busy_bind_and_round_robin_on_ties(
    make_connector: MakeConnector,
) -> None:
    received: list[int] = []  # the connection each submit_sm arrived on
    release = asyncio.Event()
    held: list[asyncio.Task[None]] = []

    async def answer_later(peer: Peer, request: pdu.Pdu) -> None:
        await release.wait()
        peer.send(pdu.SubmitSmResp(request.sequence_number, message_id="held"))

    async def script(peer: Peer) -> None:
        connection = id(peer)
        await peer.accept_bind()
        while True:
            request = await peer.read(timeout_s=10)
            if isinstance(request, pdu.Unbind):
                peer.send(pdu.UnbindResp(request.sequence_number))
                return
            received.append(connection)
            if len(received) == 1:
                held.append(asyncio.create_task(answer_later(peer, request)))
            else:
                peer.send(pdu.SubmitSmResp(request.sequence_number, message_id="now"))

    async with scripted_smsc(script) as smsc:
        connector = await make_connector(smsc.port, binds=2)
        await eventually(poll(lambda: connector.bound_sessions), lambda n: n == 2)
        # Given one bind holding an unanswered submit
        first = asyncio.create_task(
            connector.submit_text(source="Amnex", destination="4915112345678", text="held")
        )
        await eventually(poll(lambda: len(received)), lambda n: n == 1)
        # When three more are sent one after another, they all go to the idle bind
        for _ in range(3):
            await connector.submit_text(source="Amnex", destination="4915112345678", text="x")
        busy = received[0]
        assert busy not in received[1:4]
        # And once both are idle, submits alternate between them
        release.set()
        assert (await first).provider_message_ids == ("held",)
        for _ in range(4):
            await connector.submit_text(source="Amnex", destination="4915112345678", text="y")
        assert sorted(received[4:].count(c) for c in set(received[4:])) == [2, 2]
        await connector.close()
        await asyncio.gather(*held)


# ---------------------------------------------------------------------------------------------
# What reaches the SMSC


async def test_gsm7_single_part_with_automatic_alphanumeric_sender(
    smsc: SmscSimulator, make_connector: MakeConnector, delivered: Delivered
) -> None:
    connector = await up(make_connector, smsc)
    # When a short GSM-7 text is sent to a "+" number from an alphanumeric sender
    sent = await connector.submit_text(
        source="Amnex", destination="+4915112345678", text="Hello @ {world} €5"
    )
    # Then one part with the SMSC's own id arrives as GSM-7, "+" stripped, receipt requested
    assert sent == SubmittedParts(
        provider_message_ids=(smsc.messages()[0]["message_id"],), encoding="GSM-7", segments=1
    )
    (message,) = smsc.messages()
    assert message["text"] == "Hello @ {world} €5"
    assert message["data_coding"] == 0
    assert (message["source"], message["destination"]) == ("Amnex", "4915112345678")
    assert message["esm_class"] == 0
    assert message["udh"] is None
    assert message["registered_delivery"] == 1
    # And the receipt mirrors the TON/NPI we sent: alphanumeric 5/0, destination 1/1
    await eventually(poll(lambda: len(delivered.pdus)), lambda n: n == 1)
    receipt = delivered.pdus[0]
    assert isinstance(receipt, pdu.DeliverSm)
    assert (receipt.dest_addr_ton, receipt.dest_addr_npi) == (5, 0)
    assert (receipt.source_addr_ton, receipt.source_addr_npi) == (1, 1)


async def test_ucs2_text_and_numeric_sender(
    smsc: SmscSimulator, make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_submits(smsc, monkeypatch)
    connector = await up(make_connector, smsc, registered_delivery=False)
    sent = await connector.submit_text(
        source="+13125550199", destination="4915112345678", text="Привет, мир 👋"
    )
    assert (sent.encoding, sent.segments) == ("UCS-2", 1)
    (message,) = smsc.messages()
    assert message["text"] == "Привет, мир 👋"
    assert message["data_coding"] == 8
    assert message["source"] == "13125550199"
    assert message["registered_delivery"] == 0
    assert (seen[0].source_addr_ton, seen[0].source_addr_npi) == (1, 1)


async def test_latin1_when_allowed(smsc: SmscSimulator, make_connector: MakeConnector) -> None:
    connector = await up(make_connector, smsc, allow_latin1=True)
    sent = await connector.submit_text(source="12345", destination="4915112345678", text="½ off")
    assert sent.encoding == "Latin-1"
    (message,) = smsc.messages()
    assert (message["data_coding"], message["text"]) == (3, "½ off")


async def test_multipart_udh_parts_arrive_in_order_with_one_reference(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc)
    # When a 200-character GSM-7 text is sent twice
    first = await connector.submit_text(source="Amnex", destination="4915112345678", text=LONG_GSM)
    second = await connector.submit_text(source="Amnex", destination="4915112345678", text=LONG_GSM)
    # Then each is two parts with a concatenation UDH, in order, ids matching the SMSC's
    assert (first.segments, first.encoding) == (2, "GSM-7")
    messages = smsc.messages()
    assert len(messages) == 4
    assert first.provider_message_ids == tuple(m["message_id"] for m in messages[:2])
    assert second.provider_message_ids == tuple(m["message_id"] for m in messages[2:])
    for pair in (messages[:2], messages[2:]):
        assert all(m["esm_class"] & 0x40 for m in pair)
        assert [(m["udh"]["total"], m["udh"]["sequence"]) for m in pair] == [(2, 1), (2, 2)]
        assert pair[0]["udh"]["reference"] == pair[1]["udh"]["reference"]
        assert "".join(m["text"] for m in pair) == LONG_GSM
    # And the two messages carry different references
    assert messages[0]["udh"]["reference"] != messages[2]["udh"]["reference"]


async def test_multipart_sar_parts_carry_sar_tlvs(
    smsc: SmscSimulator, make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_submits(smsc, monkeypatch)
    connector = await up(make_connector, smsc, split="sar")
    text = "Ж" * 100  # UCS-2: two parts of <= 67 units
    sent = await connector.submit_text(source="Amnex", destination="4915112345678", text=text)
    assert (sent.segments, sent.encoding) == (2, "UCS-2")
    messages = smsc.messages()
    assert [m["udh"] for m in messages] == [None, None]
    assert [m["esm_class"] for m in messages] == [0, 0]
    assert "".join(m["text"] for m in messages) == text
    refs = [s.tlvs[pdu.Tag.SAR_MSG_REF_NUM] for s in seen]
    assert len(refs[0]) == 2
    assert refs[0] == refs[1]
    assert [pdu.get_int_tlv(s.tlvs, pdu.Tag.SAR_TOTAL_SEGMENTS) for s in seen] == [2, 2]
    assert [pdu.get_int_tlv(s.tlvs, pdu.Tag.SAR_SEGMENT_SEQNUM) for s in seen] == [1, 2]


async def test_failure_on_a_later_part_reports_the_parts_already_accepted(
    smsc: SmscSimulator, make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an SMSC that refuses the second submit_sm
    spy_submits(
        smsc,
        monkeypatch,
        lambda n: pdu.CommandStatus.ESME_RINVDSTADR if n == 2 else pdu.CommandStatus.ESME_ROK,
    )
    connector = await up(make_connector, smsc)
    with pytest.raises(PermanentDeliveryError) as caught:
        await connector.submit_text(source="Amnex", destination="4915112345678", text=LONG_GSM)
    (accepted,) = smsc.messages()
    assert caught.value.code == "invalid_destination"
    assert caught.value.raw_code == "0x0000000B"
    assert caught.value.detail == {"parts_submitted": [accepted["message_id"]]}


# ---------------------------------------------------------------------------------------------
# Outcomes the SMSC scripts by destination, and throttling


async def test_destination_91_is_rejected_for_good(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc)
    with pytest.raises(PermanentDeliveryError) as caught:
        await connector.submit_text(source="Amnex", destination="4915112345691", text="hi")
    assert (caught.value.code, caught.value.raw_code) == ("carrier_rejected", "0x00000045")
    assert metric("amnex_smpp_submits_total", connector, outcome="carrier_rejected") == 1


async def test_destination_93_times_out_and_the_connector_carries_on(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc, response_timeout_s=0.2)
    with pytest.raises(TemporaryDeliveryError) as caught:
        await connector.submit_text(source="Amnex", destination="4915112345693", text="hi")
    assert caught.value.code == "submit_timeout"
    sent = await connector.submit_text(source="Amnex", destination="4915112345678", text="hi")
    assert len(sent.provider_message_ids) == 1
    assert metric("amnex_smpp_submits_total", connector, outcome="submit_timeout") == 1


async def test_throttled_submits_are_resent_until_accepted(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc, throttle_backoff_s=0.02, throttle_retries=2)
    # Given an SMSC that throttles the next two submit_sm
    smsc.throttle_next(2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # When one message is sent, it is resent after pauses of 0.02 s and 0.04 s and accepted
    sent = await connector.submit_text(source="Amnex", destination="4915112345678", text="hi")
    assert loop.time() - started >= 0.05
    (message,) = smsc.messages()
    assert sent.provider_message_ids == (message["message_id"],)
    assert metric("amnex_smpp_submits_total", connector, outcome="throttled") == 2
    assert metric("amnex_smpp_submits_total", connector, outcome="accepted") == 1


async def test_throttling_gives_up_after_throttle_retries(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc, throttle_backoff_s=0.01, throttle_retries=2)
    smsc.throttle_next(3)
    with pytest.raises(TemporaryDeliveryError) as caught:
        await connector.submit_text(source="Amnex", destination="4915112345678", text="hi")
    assert caught.value.code == "throttled"
    assert caught.value.raw_code == "0x00000058"
    assert caught.value.retry_after_s == pytest.approx(0.04)  # 0.01, 0.02, then 0.04
    assert smsc.messages() == []


async def test_a_throttle_pauses_every_later_submit(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc, throttle_backoff_s=0.3, throttle_retries=0)
    # Given one submit throttled (and not retried)
    smsc.throttle_next(1)
    with pytest.raises(TemporaryDeliveryError):
        await connector.submit_text(source="Amnex", destination="4915112345678", text="a")
    # When another message is sent right after
    loop = asyncio.get_running_loop()
    started = loop.time()
    await connector.submit_text(source="Amnex", destination="4915112345679", text="b")
    # Then it waited for the connector-wide pause
    assert loop.time() - started >= 0.25


async def test_destination_92_is_throttled_once_then_accepted(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc)
    sent = await connector.submit_text(source="Amnex", destination="4915112345692", text="hi")
    assert len(sent.provider_message_ids) == 1


# ---------------------------------------------------------------------------------------------
# Throughput


async def test_throughput_limit_spreads_messages_over_time(
    smsc: SmscSimulator, make_connector: MakeConnector
) -> None:
    connector = await up(make_connector, smsc, throughput_per_s=50)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # When 20 messages are sent at once through a 50/s connector
    await asyncio.gather(
        *(
            connector.submit_text(source="Amnex", destination=f"49151123456{i:02d}", text="x")
            for i in range(10, 30)
        )
    )
    # Then they took at least (20 - burst of 2) / 50 s
    assert loop.time() - started >= 0.3
    assert len(smsc.messages()) == 20


async def test_unreachable_redis_falls_back_to_the_local_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = ThroughputLimiter("conn_x", 50, redis_url="redis://127.0.0.1:1/0")
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for _ in range(20):
            await limiter.acquire()
    finally:
        await limiter.close()
    assert loop.time() - started >= 0.3
    assert not limiter.shared
    warnings = [r for r in caplog.records if "throughput budget unavailable" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.redis
async def test_processes_share_one_throughput_budget_through_redis(
    redis_url: str | None,
) -> None:
    if redis_url is None:
        pytest.skip("needs Redis: set AMNEX_TEST_REDIS_URL (the PostgreSQL pass of .ci/run does)")
    # Given two worker processes' limiters for one 40/s connector
    key = "conn_" + secrets.token_hex(6)
    first = ThroughputLimiter(key, 40, redis_url=redis_url)
    second = ThroughputLimiter(key, 40, redis_url=redis_url)

    async def take(limiter: ThroughputLimiter) -> None:
        for _ in range(40):
            await limiter.acquire()

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # When each takes 40 tokens at the same time
        await asyncio.gather(take(first), take(second))
    finally:
        await first.close()
        await second.close()
    # Then 80 tokens needed two one-second windows (each alone would pace 40 in ~0.95 s)
    assert first.shared
    assert second.shared
    assert loop.time() - started >= 1.2


# ---------------------------------------------------------------------------------------------
# Odd answers from the SMSC


async def test_generic_nack_and_malformed_responses_become_errors_not_crashes(
    make_connector: MakeConnector,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        first = await peer.read()
        peer.send(pdu.GenericNack(first.sequence_number, pdu.CommandStatus.ESME_RSYSERR))
        second = await peer.read()
        # A submit_sm_resp whose message_id has no terminating NUL.
        peer.writer.write(
            (pdu.HEADER_SIZE + 3).to_bytes(4, "big")
            + int(pdu.CommandId.SUBMIT_SM_RESP).to_bytes(4, "big")
            + bytes(4)
            + second.sequence_number.to_bytes(4, "big")
            + b"abc"
        )
        third = await peer.read()
        peer.send(pdu.SubmitSmResp(third.sequence_number, message_id="ok-3"))
        await peer.read(timeout_s=10)  # the unbind at close

    async with scripted_smsc(script) as smsc:
        connector = await make_connector(smsc.port)
        assert await connector.wait_up(5.0)
        with pytest.raises(TemporaryDeliveryError) as nacked:
            await connector.submit_text(source="Amnex", destination="4915112345678", text="1")
        assert (nacked.value.code, nacked.value.raw_code) == ("carrier_error", "0x00000008")
        with pytest.raises(TemporaryDeliveryError) as malformed:
            await connector.submit_text(source="Amnex", destination="4915112345678", text="2")
        assert malformed.value.code == "carrier_error"
        assert malformed.value.detail == {"malformed_response": True}
        sent = await connector.submit_text(source="Amnex", destination="4915112345678", text="3")
        assert sent.provider_message_ids == ("ok-3",)
        await connector.close()


# ---------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Amnex", ("Amnex", 5, 0)),
        ("+13125550199", ("13125550199", 1, 1)),
        ("13125550199", ("13125550199", 1, 1)),
        ("+12345", ("12345", 1, 1)),
        ("12345", ("12345", 3, 0)),
        ("12345678", ("12345678", 3, 0)),
        ("123456789", ("123456789", 1, 1)),
        ("Shop 24", ("Shop 24", 5, 0)),
    ],
)
def test_source_ton_npi_are_derived_from_the_address(
    source: str, expected: tuple[str, int, int]
) -> None:
    assert source_address_fields(source) == expected


def test_configured_source_ton_npi_win() -> None:
    assert source_address_fields("+4915112345678", 2, 9) == ("4915112345678", 2, 9)
    assert source_address_fields("Amnex", 5, None) == ("Amnex", 5, 0)


def test_reconnect_delay_grows_from_min_to_max_with_jitter() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        cap = min(60.0, 1.0 * 2 ** (attempt + 1))
        delays = [reconnect_delay_s(attempt, 1.0, 60.0, rng) for _ in range(50)]
        assert all(1.0 <= d <= cap for d in delays)
        assert max(delays) - min(delays) > (cap - 1.0) / 2  # jittered across the range
    assert reconnect_delay_s(500, 1.0, 60.0, rng) <= 60.0


def test_mask_address_keeps_two_characters() -> None:
    assert mask_address("4915112345691") == "***********91"
    assert mask_address("9") == "9"


@pytest.mark.parametrize(
    "overrides",
    [
        {"password": "nine_char"},
        {"system_id": "s" * 16},
        {"port": 0},
        {"port": 65536},
        {"binds": 0},
        {"binds": 33},
        {"window": 1001},
        {"throughput_per_s": -1},
        {"reconnect_min_s": 5, "reconnect_max_s": 1},
        {"bind_type": "both"},
        {"split": "payload"},
        {"unknown_field": 1},
    ],
)
def test_config_rejects_invalid_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        make_config(**overrides)


def test_config_is_frozen() -> None:
    config = make_config()
    with pytest.raises(pydantic.ValidationError):
        config.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# A scripted SMSC, for what the simulator does not do


class Peer:
    """One scripted-SMSC connection, framed with our codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, timeout_s: float = 5.0) -> pdu.Pdu:
        async with asyncio.timeout(timeout_s):
            head = await self.reader.readexactly(pdu.HEADER_SIZE)
            header = pdu.read_header(head)
            assert header is not None
            body = await self.reader.readexactly(header.command_length - pdu.HEADER_SIZE)
        return pdu.decode(head + body)

    def send(self, answer: pdu.Pdu) -> None:
        self.writer.write(pdu.encode(answer))

    async def accept_bind(self) -> None:
        bind = await self.read()
        assert isinstance(bind, pdu.BindTransceiver)
        self.send(pdu.BindTransceiverResp(bind.sequence_number, system_id="SCRIPT"))


class ScriptedSmsc:
    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0


@contextlib.asynccontextmanager
async def scripted_smsc(script: Callable[[Peer], Awaitable[None]]) -> AsyncIterator[ScriptedSmsc]:
    tasks: list[asyncio.Task[None]] = []
    smsc = ScriptedSmsc(0)

    async def run(peer: Peer) -> None:
        try:
            await script(peer)
        finally:
            peer.writer.close()

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        smsc.connections += 1
        tasks.append(asyncio.create_task(run(Peer(reader, writer))))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    smsc.port = server.sockets[0].getsockname()[1]
    try:
        yield smsc
        # The script's own assertions count: surface them here.
        for task in tasks:
            await asyncio.wait_for(task, 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.close()
        await server.wait_closed()
