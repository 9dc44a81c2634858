"""Simulators: an SMPP 3.4 SMSC on loopback that records submit_sm and plays scripted outcomes.

The SMS channel's peer for `amnex dev`, the tests and the benchmarks. It runs inside the
caller's event loop and reuses our own codec (`amnex.channels.smpp.pdu`). Outcomes follow the
`amnex dev` contract, keyed on the last two digits of the destination address:

    ...90  accepted; receipt stat:UNDELIV err:001 (message_state 5)
    ...91  refused: submit_sm_resp with ESME_RSUBMITFAIL
    ...92  ESME_RTHROTTLED the first time the destination is seen, accepted after
    ...93  recorded, but no submit_sm_resp is ever sent (the ESME cannot know the outcome)
    ...94  accepted; no receipt ever
    ...95  accepted; receipt after `slow_receipt_delay_s`
    other  accepted; receipt stat:DELIVRD err:000 after `receipt_delay_s`

Receipts (only when registered_delivery asks for one) go to a receiver or transceiver bind of
the submitting system_id, carry both the TLV form (receipted_message_id, message_state) and the
Appendix B text, and stay owed until the ESME answers deliver_sm_resp: a receipt outstanding on
a connection that drops is sent again on the next receiver bind. `inject_mo` pushes an inbound
message the same way. State lives in memory only.

Speed. The simulator must be much faster than the client it measures, so it is a plain
`asyncio.Protocol`: frames are cut with `read_header`, responses of one read are written with
one `transport.write`, received messages are kept raw and decoded only when `messages()` is
called, and receipts due at the same delay are drained by one timer, not one per message.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import struct
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from amnex.channels.smpp import pdu
from amnex.channels.smpp import text as sms_text

__all__ = ["NoReceiverBound", "SmscSimulator", "outcome_digits"]

_SMSC_SYSTEM_ID: Final = "amnex-smsc"
_HEADER: Final = struct.Struct(">IIII")
_RESP_BIT: Final = 0x80000000
_MAX_SEQUENCE: Final = 0x7FFFFFFF
# Single short_message carries at most 254 octets; longer MO text goes in message_payload.
_MAX_SHORT_MESSAGE: Final = 254
# Statuses with which an ESME says "later, not never": the receipt is offered again.
_RETRY_STATUSES: Final = frozenset(
    {
        pdu.CommandStatus.ESME_RX_T_APPN,
        pdu.CommandStatus.ESME_RTHROTTLED,
        pdu.CommandStatus.ESME_RMSGQFUL,
    }
)
_MESSAGE_STATE_DELIVERED: Final = 2
_MESSAGE_STATE_UNDELIVERABLE: Final = 5

_BindResp = pdu.BindTransmitterResp | pdu.BindReceiverResp | pdu.BindTransceiverResp
_BIND_RESP: Final[dict[int, type[_BindResp]]] = {
    pdu.CommandId.BIND_TRANSMITTER: pdu.BindTransmitterResp,
    pdu.CommandId.BIND_RECEIVER: pdu.BindReceiverResp,
    pdu.CommandId.BIND_TRANSCEIVER: pdu.BindTransceiverResp,
}


class NoReceiverBound(RuntimeError):
    """`inject_mo` found no receiver or transceiver bind to deliver to."""


def outcome_digits(address: str) -> str | None:
    """The two digits that script a destination's outcome: its last two, if both are digits."""
    tail = address[-2:]
    return tail if len(tail) == 2 and tail.isdigit() else None


@dataclass(slots=True)
class _Received:
    """A submit_sm as received; decoded lazily by `messages()` to keep the hot path cheap."""

    message_id: str
    system_id: str
    source: str
    destination: str
    data_coding: int
    esm_class: int
    registered_delivery: int
    short_message: bytes
    received_at: float


@dataclass(slots=True)
class _Owed:
    """A deliver_sm sent and not yet answered: a receipt to offer again, or an MO's waiter."""

    system_id: str
    deliver: pdu.DeliverSm
    waiter: asyncio.Future[int] | None


class _Session(asyncio.Protocol):
    def __init__(self, smsc: SmscSimulator) -> None:
        self._smsc = smsc
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.system_id: str | None = None
        self.can_transmit = False
        self.can_receive = False
        self._sequence = itertools.count(1)
        self.owed: dict[int, _Owed] = {}

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_server always hands a stream protocol an asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self._smsc._sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._smsc._session_closed(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        end = len(buffer)
        try:
            while end - pos >= pdu.HEADER_SIZE:
                # A 16-octet copy is cheaper than compacting the buffer after every frame.
                header = pdu.read_header(bytes(buffer[pos : pos + pdu.HEADER_SIZE]))
                if header is None:  # unreachable: 16 octets are there; keeps mypy exact
                    break
                length = header.command_length
                if end - pos < length:
                    break
                frame = bytes(buffer[pos : pos + length])
                pos += length
                self._handle(header, frame)
                if self.transport is None or self.transport.is_closing():
                    break
        except pdu.PduError as error:
            # A bad command_length: the stream cannot be re-framed, so say why and hang up.
            self._send(_nack(error))
            self._flush()
            self._close()
            return
        finally:
            del buffer[:pos]
        self._flush()

    # -- writing ----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            # Writes made outside data_received (receipts, MO) are batched per loop iteration.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def next_sequence(self) -> int:
        seq = next(self._sequence)
        if seq > _MAX_SEQUENCE:
            self._sequence = itertools.count(2)
            seq = 1
        return seq

    def send_deliver(self, owed: _Owed) -> None:
        seq = self.next_sequence()
        owed.deliver.sequence_number = seq
        self.owed[seq] = owed
        self._send(pdu.encode(owed.deliver))

    # -- dispatch ---------------------------------------------------------------------------

    def _handle(self, header: pdu.Header, frame: bytes) -> None:
        cid = header.command_id
        seq = header.sequence_number
        if cid == pdu.CommandId.ENQUIRE_LINK:
            # Allowed in every session state (SMPP 3.4 section 2.3).
            self._send(_header_only(pdu.CommandId.ENQUIRE_LINK_RESP, 0, seq))
            return
        if cid & _RESP_BIT:
            self._handle_response(header)
            return
        if cid in _BIND_RESP:
            self._handle_bind(frame, cid, seq)
            return
        if self.system_id is None:
            self._send(_header_only(cid | _RESP_BIT, pdu.CommandStatus.ESME_RINVBNDSTS, seq))
            return
        if cid == pdu.CommandId.SUBMIT_SM:
            if not self.can_transmit:
                self._send(_submit_resp(seq, pdu.CommandStatus.ESME_RINVBNDSTS))
                return
            try:
                submit = pdu.decode(frame)
            except pdu.PduError as error:
                self._send(_nack(error))
                return
            if not isinstance(submit, pdu.SubmitSm):  # the header said submit_sm
                return
            response = self._smsc._submit(self.system_id, submit)
            if response is not None:
                self._send(response)
            return
        if cid == pdu.CommandId.UNBIND:
            self._send(_header_only(pdu.CommandId.UNBIND_RESP, 0, seq))
            self._flush()
            self._close()
            return
        # query_sm, data_sm, cancel_sm, ... are outside what the channel uses.
        self._send(_header_only(pdu.CommandId.GENERIC_NACK, pdu.CommandStatus.ESME_RINVCMDID, seq))

    def _handle_response(self, header: pdu.Header) -> None:
        owed = self.owed.pop(header.sequence_number, None)
        if owed is None:
            return
        status = header.command_status
        if owed.waiter is not None:
            if not owed.waiter.done():
                owed.waiter.set_result(status)
        elif status in _RETRY_STATUSES:
            self._smsc._schedule(owed, self._smsc.receipt_delay_s)

    def _handle_bind(self, frame: bytes, cid: int, seq: int) -> None:
        resp_class = _BIND_RESP[cid]
        try:
            bind = pdu.decode(frame)
        except pdu.PduError as error:
            self._send(_nack(error))
            return
        if not isinstance(bind, pdu.BindTransmitter | pdu.BindReceiver | pdu.BindTransceiver):
            return
        status = pdu.CommandStatus.ESME_ROK
        if self.system_id is not None:
            status = pdu.CommandStatus.ESME_RALYBND
        elif not hmac.compare_digest(bind.system_id.encode(), self._smsc.system_id.encode()):
            status = pdu.CommandStatus.ESME_RINVSYSID
        elif not hmac.compare_digest(bind.password.encode(), self._smsc.password.encode()):
            status = pdu.CommandStatus.ESME_RINVPASWD
        resp = resp_class(sequence_number=seq, command_status=status)
        if status == pdu.CommandStatus.ESME_ROK:
            resp.system_id = _SMSC_SYSTEM_ID
        self._send(pdu.encode(resp))
        if status != pdu.CommandStatus.ESME_ROK:
            return
        self.system_id = bind.system_id
        self.can_transmit = cid != pdu.CommandId.BIND_RECEIVER
        self.can_receive = cid != pdu.CommandId.BIND_TRANSMITTER
        self._smsc._session_bound(self)


class _ReceiptTimer:
    """Receipts due after one fixed delay: a FIFO drained by a single re-armed timer."""

    def __init__(self, smsc: SmscSimulator, delay_s: float) -> None:
        self._smsc = smsc
        self._delay_s = delay_s
        self._due: deque[tuple[float, _Owed]] = deque()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, owed: _Owed) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + self._delay_s
        self._due.append((when, owed))
        if self._handle is None:
            self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._due
        while due and due[0][0] <= now:
            self._smsc._offer(due.popleft()[1])
        if due:
            self._handle = loop.call_at(due[0][0], self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due.clear()


class SmscSimulator:
    """A local SMPP 3.4 SMSC that accepts, refuses or throttles submit_sm by the digits."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        system_id: str = "amnex",
        password: str = "secret",  # noqa: S107 - the documented `amnex dev` credential
        receipt_delay_s: float = 0.05,
        slow_receipt_delay_s: float = 5.0,
        max_stored: int = 10_000,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._port = 0
        self.system_id = system_id
        self.password = password
        self.receipt_delay_s = receipt_delay_s
        self.slow_receipt_delay_s = slow_receipt_delay_s
        self._max_stored = max_stored
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._receivers: dict[str, list[_Session]] = {}
        self._round_robin = itertools.count()
        self._messages: deque[_Received] = deque(maxlen=max_stored)
        self._message_ids = itertools.count(1)
        self._throttled_once: set[str] = set()
        self._throttle_next = 0
        # Receipts with no receiver bound yet, per system_id; sent when one binds.
        self._waiting: dict[str, deque[_Owed]] = {}
        self._timers: dict[float, _ReceiptTimer] = {}

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); 0 before `start()`."""
        return self._port

    @property
    def bound_sessions(self) -> int:
        """Sessions that completed a bind and are still connected."""
        return sum(1 for session in self._sessions if session.system_id is not None)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the SMSC simulator is already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Session(self), host=self._host, port=self._requested_port
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, cut every connection and drop receipts not yet sent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.disconnect_all()
        self._waiting.clear()
        await server.wait_closed()

    def disconnect_all(self) -> None:
        """Abort every open connection now, without unbind (for failure tests).

        Receipts outstanding on them are kept and offered to the next receiver bind.
        """
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.abort()

    def throttle_next(self, n: int) -> None:
        """Answer the next `n` submit_sm (whatever the destination) with ESME_RTHROTTLED."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self._throttle_next = n

    def clear(self) -> None:
        """Forget stored messages, pending throttles and which 92 destinations were seen."""
        self._messages.clear()
        self._throttled_once.clear()
        self._throttle_next = 0

    def messages(self) -> list[dict[str, Any]]:
        """Stored submit_sm, oldest first (at most `max_stored`), as JSON-ready dicts."""
        return [_describe(received) for received in self._messages]

    async def inject_mo(self, source: str, destination: str, text: str) -> int:
        """Send an inbound message as deliver_sm; return the ESME's deliver_sm_resp status.

        Goes to a receiver or transceiver bind of the configured system_id; raises
        `NoReceiverBound` if there is none, `ConnectionError` if it drops before answering.
        """
        session = self._pick_receiver(self.system_id)
        if session is None:
            raise NoReceiverBound(f"no receiver or transceiver bound as {self.system_id!r}")
        encoding = sms_text.choose_encoding(text)
        body = sms_text.encode(text, encoding)
        deliver = pdu.DeliverSm(
            source_addr=source,
            destination_addr=destination,
            data_coding=sms_text.DATA_CODING[encoding],
        )
        if len(body) > _MAX_SHORT_MESSAGE:
            deliver.tlvs[pdu.Tag.MESSAGE_PAYLOAD] = body
        else:
            deliver.short_message = body
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        session.send_deliver(_Owed(self.system_id, deliver, waiter))
        return await waiter

    # -- internals --------------------------------------------------------------------------

    def _submit(self, system_id: str, submit: pdu.SubmitSm) -> bytes | None:
        seq = submit.sequence_number
        destination = submit.destination_addr
        if self._throttle_next > 0:
            self._throttle_next -= 1
            return _submit_resp(seq, pdu.CommandStatus.ESME_RTHROTTLED)
        digits = outcome_digits(destination)
        if digits == "91":
            return _submit_resp(seq, pdu.CommandStatus.ESME_RSUBMITFAIL)
        if digits == "92" and destination not in self._throttled_once:
            self._throttled_once.add(destination)
            return _submit_resp(seq, pdu.CommandStatus.ESME_RTHROTTLED)
        # Zero-padded on purpose: the ESME must keep provider ids as opaque text.
        message_id = f"{next(self._message_ids):010d}"
        received = _Received(
            message_id,
            system_id,
            submit.source_addr,
            destination,
            submit.data_coding,
            submit.esm_class,
            submit.registered_delivery,
            submit.short_message or submit.tlvs.get(pdu.Tag.MESSAGE_PAYLOAD, b""),
            time.time(),
        )
        self._messages.append(received)
        if submit.registered_delivery & 1 and digits not in ("93", "94"):
            delay = self.slow_receipt_delay_s if digits == "95" else self.receipt_delay_s
            self._schedule(_Owed(system_id, _receipt(submit, received), None), delay)
        if digits == "93":
            return None
        return pdu.encode(pdu.SubmitSmResp(sequence_number=seq, message_id=message_id))

    def _schedule(self, owed: _Owed, delay_s: float) -> None:
        timer = self._timers.get(delay_s)
        if timer is None:
            timer = self._timers[delay_s] = _ReceiptTimer(self, delay_s)
        timer.add(owed)

    def _offer(self, owed: _Owed) -> None:
        session = self._pick_receiver(owed.system_id)
        if session is None:
            self._waiting.setdefault(owed.system_id, deque(maxlen=self._max_stored)).append(owed)
        else:
            session.send_deliver(owed)

    def _pick_receiver(self, system_id: str) -> _Session | None:
        receivers = self._receivers.get(system_id)
        if not receivers:
            return None
        return receivers[next(self._round_robin) % len(receivers)]

    def _session_bound(self, session: _Session) -> None:
        if not session.can_receive or session.system_id is None:
            return
        self._receivers.setdefault(session.system_id, []).append(session)
        waiting = self._waiting.pop(session.system_id, None)
        while waiting:
            session.send_deliver(waiting.popleft())

    def _session_closed(self, session: _Session) -> None:
        self._sessions.discard(session)
        if session.system_id is not None and session.can_receive:
            receivers = self._receivers.get(session.system_id, [])
            if session in receivers:
                receivers.remove(session)
        owed, session.owed = session.owed, {}
        for item in owed.values():
            if item.waiter is not None:
                if not item.waiter.done():
                    item.waiter.set_exception(
                        ConnectionError("the ESME disconnected before answering deliver_sm")
                    )
            elif self._server is not None:
                # A receipt is owed until answered: offer it again (another bind or the next).
                item.deliver.sequence_number = 0
                self._offer(item)


def _header_only(command_id: int, status: int, sequence: int) -> bytes:
    return _HEADER.pack(pdu.HEADER_SIZE, command_id, status, sequence)


def _submit_resp(sequence: int, status: int) -> bytes:
    # SMPP 3.4 section 4.4.2: an error submit_sm_resp carries no body.
    return _header_only(pdu.CommandId.SUBMIT_SM_RESP, status, sequence)


def _nack(error: pdu.PduError) -> bytes:
    return _header_only(pdu.CommandId.GENERIC_NACK, error.status, error.sequence_number or 0)


def _receipt(submit: pdu.SubmitSm, received: _Received) -> pdu.DeliverSm:
    delivered = outcome_digits(received.destination) != "90"
    stat, err, dlvrd = ("DELIVRD", "000", "001") if delivered else ("UNDELIV", "001", "000")
    original = _decoded_text(received.data_coding, received.esm_class, received.short_message)
    submitted = datetime.fromtimestamp(received.received_at, UTC).strftime("%y%m%d%H%M")
    # The done date is when the receipt is built: close enough for a simulator, and a receipt
    # offered again keeps the date of its first attempt, as a real SMSC's would.
    done = datetime.now(UTC).strftime("%y%m%d%H%M")
    body = (
        f"id:{received.message_id} sub:001 dlvrd:{dlvrd} submit date:{submitted} "
        f"done date:{done} stat:{stat} err:{err} text:{(original or '')[:20]}"
    )
    # Receipts travel as GSM-7 (data_coding 0); characters it lacks become '?'.
    safe = "".join(ch if sms_text.is_gsm7(ch) else "?" for ch in body)
    deliver = pdu.DeliverSm(
        source_addr_ton=submit.dest_addr_ton,
        source_addr_npi=submit.dest_addr_npi,
        source_addr=submit.destination_addr,
        dest_addr_ton=submit.source_addr_ton,
        dest_addr_npi=submit.source_addr_npi,
        destination_addr=submit.source_addr,
        esm_class=0x04,
        data_coding=0,
        short_message=sms_text.encode(safe, "GSM-7")[:_MAX_SHORT_MESSAGE],
    )
    pdu.set_cstring_tlv(deliver.tlvs, pdu.Tag.RECEIPTED_MESSAGE_ID, received.message_id)
    pdu.set_int_tlv(
        deliver.tlvs,
        pdu.Tag.MESSAGE_STATE,
        _MESSAGE_STATE_DELIVERED if delivered else _MESSAGE_STATE_UNDELIVERABLE,
    )
    return deliver


def _split_udh(esm_class: int, short_message: bytes) -> tuple[bytes | None, bytes]:
    if not esm_class & 0x40 or not short_message:
        return None, short_message
    end = 1 + short_message[0]
    return short_message[:end], short_message[end:]


def _parse_udh(udh: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = {"raw": udh.hex(), "reference": None, "total": None, "sequence": None}
    pos, end = 1, len(udh)
    while pos + 2 <= end:
        iei, length = udh[pos], udh[pos + 1]
        value = udh[pos + 2 : pos + 2 + length]
        if iei == 0x00 and len(value) == 3:
            parsed.update(reference=value[0], total=value[1], sequence=value[2])
        elif iei == 0x08 and len(value) == 4:
            parsed.update(
                reference=int.from_bytes(value[:2], "big"), total=value[2], sequence=value[3]
            )
        pos += 2 + length
    return parsed


def _decoded_text(data_coding: int, esm_class: int, short_message: bytes) -> str | None:
    encoding = sms_text.encoding_for_data_coding(data_coding)
    if encoding is None:
        return None
    return sms_text.decode(_split_udh(esm_class, short_message)[1], encoding)


def _describe(received: _Received) -> dict[str, Any]:
    udh, _ = _split_udh(received.esm_class, received.short_message)
    return {
        "message_id": received.message_id,
        "system_id": received.system_id,
        "source": received.source,
        "destination": received.destination,
        "data_coding": received.data_coding,
        "esm_class": received.esm_class,
        "registered_delivery": received.registered_delivery,
        "text": _decoded_text(received.data_coding, received.esm_class, received.short_message),
        "udh": None if udh is None else _parse_udh(udh),
        "received_at": datetime.fromtimestamp(received.received_at, UTC).isoformat(),
    }
