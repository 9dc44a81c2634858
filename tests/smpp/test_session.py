"""SMPP ESME session over real loopback sockets.

The independent peer is `smpp34` (its SMSC server). Where it cannot do what a test needs —
refuse a bind, withhold responses, send malformed or unusual PDUs, cut the connection
mid-window, measure exactly when a *_resp arrives — a small scripted SMSC on asyncio streams
speaks to the session through our codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import smpp34

from amnex.channels.smpp.pdu import (
    HEADER_SIZE,
    BindTransceiver,
    BindTransceiverResp,
    CommandId,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    PduError,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    decode,
    encode,
    read_header,
)
from amnex.channels.smpp.session import (
    BindError,
    ConnectionLost,
    NotBound,
    ResponseTimeout,
    SmppError,
    SmppSession,
)
from support import server_tls_context

# ---------------------------------------------------------------------------------------------
# Peers


def _free_port() -> int:
    # smpp34's Server does not report the port it bound, so pick one first.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def smpp34_smsc() -> AsyncIterator[tuple[smpp34.Server, int]]:
    port = _free_port()
    server = smpp34.Server("127.0.0.1", port, system_id="SMSC")
    await server.start()
    try:
        yield server, port
    finally:
        await server.stop()


async def next_event(server: smpp34.Server, kind: type[object]) -> Any:
    """The next server event of `kind`, skipping others (e.g. the Esme handle)."""
    async with asyncio.timeout(5):
        while True:
            event = await server.next()
            if isinstance(event, kind):
                return event


class Peer:
    """One scripted-SMSC connection, framed with our codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, timeout_s: float = 5.0) -> Pdu:
        async with asyncio.timeout(timeout_s):
            head = await self.reader.readexactly(HEADER_SIZE)
            header = read_header(head)
            assert header is not None
            body = await self.reader.readexactly(header.command_length - HEADER_SIZE)
        return decode(head + body)

    def send(self, pdu: Pdu) -> None:
        self.writer.write(encode(pdu))

    async def accept_bind(self, status: int = CommandStatus.ESME_ROK) -> None:
        bind = await self.read()
        assert isinstance(bind, BindTransceiver)
        self.send(BindTransceiverResp(bind.sequence_number, status, system_id="SCRIPT"))


Script = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_smsc(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    tasks: list[asyncio.Task[None]] = []

    async def run(peer: Peer) -> None:
        try:
            await script(peer)
        finally:
            peer.writer.close()

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.create_task(run(Peer(reader, writer))))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
        # The script's own assertions count: surface them here.
        for task in tasks:
            await asyncio.wait_for(task, 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.close()
        await server.wait_closed()


def session(port: int, **kwargs: object) -> SmppSession:
    options: dict[str, object] = {
        "system_id": "amnex",
        "password": "secret",
        "response_timeout_s": 2.0,
        "enquire_link_interval_s": 30.0,
    }
    options.update(kwargs)
    return SmppSession("127.0.0.1", port, **options)  # type: ignore[arg-type]


def submit_sm(destination: str = "4915112345678") -> SubmitSm:
    return SubmitSm(source_addr="Amnex", destination_addr=destination, short_message=b"hi")


# ---------------------------------------------------------------------------------------------
# Against smpp34


async def test_bind_submit_and_unbind_against_smpp34() -> None:
    async with smpp34_smsc() as (server, port):
        sess = session(port)
        await sess.connect()
        assert sess.is_bound
        esme = await next_event(server, smpp34.Esme)
        assert esme.system_id == "amnex"

        pending = asyncio.create_task(sess.submit(submit_sm()))
        event = await next_event(server, smpp34.SubmitSmEvent)
        assert event.destination_addr == "4915112345678"
        event.accept("0042")
        resp = await pending
        assert resp.command_status == CommandStatus.ESME_ROK
        assert resp.message_id == "0042"  # opaque: leading zeros kept

        await sess.unbind()
        assert sess.closed.is_set()
        assert not sess.is_bound
        await next_event(server, smpp34.Unbound)
        with pytest.raises(NotBound):
            await sess.submit(submit_sm())


async def test_window_of_10_bounds_200_submits_and_all_get_ids() -> None:
    async with smpp34_smsc() as (server, port):
        sess = session(port, window=10)
        await sess.connect()
        held = 0
        max_held = 0
        loop = asyncio.get_running_loop()

        def answer(event: Any) -> None:
            nonlocal held
            held -= 1
            event.accept("0" + event.destination_addr)

        async def smsc() -> None:
            # The server sees what the window allows: requests it has not answered yet.
            nonlocal held, max_held
            for _ in range(200):
                event = await next_event(server, smpp34.SubmitSmEvent)
                held += 1
                max_held = max(max_held, held)
                # Long enough for the client to fill its window even on a loaded machine.
                loop.call_later(0.02, answer, event)

        smsc_task = asyncio.create_task(smsc())
        destinations = [f"49151{i:07d}" for i in range(200)]
        resps = await asyncio.gather(*(sess.submit(submit_sm(d)) for d in destinations))
        await smsc_task

        assert max_held <= 10
        assert max_held == 10  # the window is used, not just respected
        assert [r.message_id for r in resps] == ["0" + d for d in destinations]
        assert all(r.command_status == CommandStatus.ESME_ROK for r in resps)
        assert sess.outstanding == 0
        await sess.unbind()


async def test_throttled_status_is_returned_to_the_caller() -> None:
    async with smpp34_smsc() as (server, port):
        sess = session(port)
        await sess.connect()
        pending = asyncio.create_task(sess.submit(submit_sm()))
        event = await next_event(server, smpp34.SubmitSmEvent)
        event.reject(int(CommandStatus.ESME_RTHROTTLED))
        resp = await pending
        assert resp.command_status == CommandStatus.ESME_RTHROTTLED
        assert sess.is_bound  # the caller decides what to do; the session carries on
        await sess.unbind()


async def test_deliver_sm_resp_is_sent_only_after_on_deliver_returns() -> None:
    stored: list[str] = []

    async def on_deliver(pdu: DeliverSm | DataSm) -> CommandStatus:
        await asyncio.sleep(0.15)  # a slow durable write
        stored.append(pdu.short_message.decode() if isinstance(pdu, DeliverSm) else "")
        return CommandStatus.ESME_ROK

    async with smpp34_smsc() as (server, port):
        sess = session(port, on_deliver=on_deliver)
        await sess.connect()
        esme = await next_event(server, smpp34.Esme)
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await esme.deliver_sm("4915112345678", b"id:1 stat:DELIVRD", source_addr="1234")
        elapsed = loop.time() - started
        # Measured by the SMSC: the response came after the store, not before.
        assert stored == ["id:1 stat:DELIVRD"]
        assert elapsed >= 0.15
        assert resp.command_status == 0
        await sess.unbind()


async def test_on_deliver_raising_answers_temporary_app_error() -> None:
    async def on_deliver(pdu: DeliverSm | DataSm) -> CommandStatus:
        raise RuntimeError("database down")

    async with smpp34_smsc() as (server, port):
        sess = session(port, on_deliver=on_deliver)
        await sess.connect()
        esme = await next_event(server, smpp34.Esme)
        resp = await esme.deliver_sm("4915112345678", b"mo", source_addr="1234")
        assert resp.command_status == CommandStatus.ESME_RX_T_APPN
        assert sess.is_bound
        await sess.unbind()


async def test_enquire_link_to_smpp34_is_answered() -> None:
    async with smpp34_smsc() as (_server, port):
        sess = session(port, enquire_link_interval_s=0.05, response_timeout_s=0.5)
        await sess.connect()
        # Several idle intervals pass; each enquire_link is answered, so the bind survives.
        await asyncio.sleep(0.4)
        assert sess.is_bound
        await sess.unbind()


# ---------------------------------------------------------------------------------------------
# Against the scripted SMSC


async def test_bind_refused_raises_bind_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind(CommandStatus.ESME_RINVPASWD)
        await peer.reader.read()  # until the session hangs up

    async with scripted_smsc(script) as port:
        sess = session(port)
        with pytest.raises(BindError) as info:
            await sess.connect()
        assert info.value.status == CommandStatus.ESME_RINVPASWD
        assert sess.closed.is_set()
        assert not sess.is_bound


async def test_response_timeout_frees_the_slot() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        first = await peer.read()
        assert isinstance(first, SubmitSm)  # withheld: never answered
        second = await peer.read()
        assert isinstance(second, SubmitSm)
        peer.send(SubmitSmResp(second.sequence_number, message_id="2"))
        await peer.reader.read()

    async with scripted_smsc(script) as port:
        sess = session(port, window=1, response_timeout_s=0.2)
        await sess.connect()
        with pytest.raises(ResponseTimeout):
            await sess.submit(submit_sm())
        # window=1: the second submit can only go out because the timeout gave the slot back.
        assert (await sess.submit(submit_sm())).message_id == "2"
        assert sess.is_bound
        await sess.close()


async def test_connection_cut_mid_window_fails_all_outstanding_at_once() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        for _ in range(5):
            assert isinstance(await peer.read(), SubmitSm)
        peer.writer.transport.abort()

    async with scripted_smsc(script) as port:
        sess = session(port, window=10, response_timeout_s=10.0)
        await sess.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(sess.submit(submit_sm()) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionLost) for r in results), results
        assert loop.time() - started < 2.0  # not the 10 s response timeout
        assert sess.closed.is_set()
        assert sess.outstanding == 0
        with pytest.raises(NotBound):
            await sess.submit(submit_sm())


async def test_generic_nack_for_a_submit_raises_smpp_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        submit = await peer.read()
        peer.send(GenericNack(submit.sequence_number, CommandStatus.ESME_RSYSERR))
        await peer.reader.read()

    async with scripted_smsc(script) as port:
        sess = session(port)
        await sess.connect()
        with pytest.raises(SmppError) as info:
            await sess.submit(submit_sm())
        assert info.value.status == CommandStatus.ESME_RSYSERR
        await sess.close()


async def test_malformed_and_unknown_pdus_get_generic_nack() -> None:
    # A deliver_sm whose body stops in the middle of service_type.
    truncated = struct.pack(">IIII", 20, CommandId.DELIVER_SM, 0, 7) + b"abcd"
    with pytest.raises(PduError) as info:
        decode(truncated)
    expected_status = info.value.status

    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        peer.writer.write(truncated)
        nack = await peer.read()
        assert isinstance(nack, GenericNack)
        assert (nack.sequence_number, nack.command_status) == (7, expected_status)
        peer.writer.write(struct.pack(">IIII", 16, 0x00000077, 0, 8))
        nack = await peer.read()
        assert isinstance(nack, GenericNack)
        assert (nack.sequence_number, nack.command_status) == (8, CommandStatus.ESME_RINVCMDID)
        peer.send(Unbind(9))
        assert isinstance(await peer.read(), UnbindResp)

    async with scripted_smsc(script) as port:
        sess = session(port)
        await sess.connect()
        async with asyncio.timeout(5):
            await sess.closed.wait()  # the SMSC's unbind ends the session


async def test_data_sm_resp_waits_for_on_deliver_and_carries_its_status() -> None:
    stored = asyncio.Event()

    async def on_deliver(pdu: DeliverSm | DataSm) -> CommandStatus:
        assert isinstance(pdu, DataSm)
        await asyncio.sleep(0.1)
        stored.set()
        return CommandStatus.ESME_RX_P_APPN

    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        peer.send(DataSm(31, source_addr="1234", destination_addr="4915112345678"))
        resp = await peer.read()
        assert stored.is_set()  # the store finished before the response reached us
        assert isinstance(resp, DataSmResp)
        assert (resp.sequence_number, resp.command_status) == (31, CommandStatus.ESME_RX_P_APPN)

    async with scripted_smsc(script) as port:
        sess = session(port, on_deliver=on_deliver)
        await sess.connect()
        async with asyncio.timeout(5):
            await sess.closed.wait()


async def test_enquire_link_from_smsc_is_answered() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        peer.send(EnquireLink(77))
        resp = await peer.read()
        assert isinstance(resp, EnquireLinkResp)
        assert resp.sequence_number == 77

    async with scripted_smsc(script) as port:
        sess = session(port)
        await sess.connect()
        async with asyncio.timeout(5):
            await sess.closed.wait()


async def test_missing_enquire_link_resp_closes_the_connection() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        assert isinstance(await peer.read(), EnquireLink)  # and never answer it
        assert await peer.reader.read() == b""  # the session hangs up

    async with scripted_smsc(script) as port:
        sess = session(port, enquire_link_interval_s=0.1, response_timeout_s=0.2)
        await sess.connect()
        async with asyncio.timeout(2):
            await sess.closed.wait()
        assert not sess.is_bound


async def test_unbind_waits_for_outstanding_submits() -> None:
    order: list[str] = []

    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        submit = await peer.read()
        assert isinstance(submit, SubmitSm)
        await asyncio.sleep(0.1)
        order.append("submit_sm_resp")
        peer.send(SubmitSmResp(submit.sequence_number, message_id="7"))
        unbind = await peer.read()
        assert isinstance(unbind, Unbind)
        order.append("unbind")
        peer.send(UnbindResp(unbind.sequence_number))
        assert await peer.reader.read() == b""

    async with scripted_smsc(script) as port:
        sess = session(port)
        await sess.connect()
        pending = asyncio.create_task(sess.submit(submit_sm()))
        await asyncio.sleep(0.02)  # the submit is on the wire
        await sess.unbind()
        assert (await pending).message_id == "7"
        assert order == ["submit_sm_resp", "unbind"]
        assert sess.closed.is_set()


async def test_bind_and_submit_over_tls(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.accept_bind()
        submit = await peer.read()
        peer.send(SubmitSmResp(submit.sequence_number, message_id="tls-1"))
        unbind = await peer.read()
        assert isinstance(unbind, Unbind)
        peer.send(UnbindResp(unbind.sequence_number))

    server_context = server_tls_context(tmp_path)
    client_context = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    async with scripted_smsc(script, tls=server_context) as port:
        sess = session(port, tls=client_context)
        await sess.connect()
        assert (await sess.submit(submit_sm())).message_id == "tls-1"
        await sess.unbind()
        assert sess.closed.is_set()
