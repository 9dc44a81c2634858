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

Latency. With `response_delay_s` > 0 every submit_sm_resp (success or error) leaves that long
after its submit_sm arrived, in arrival order: an SMSC with a fixed answer latency, which is
what bounds a windowed ESME at window / latency. The responses of one read share one due time
and go out in one write from a per-connection FIFO drained by a single `loop.call_at` timer,
not a task or timer per message. bind, enquire_link and generic_nack answers are not delayed.

Counters for benchmarks, all cheap: `submitted_count` (submit_sm given a message id since
start, 93s included), `receipts_sent` (receipt deliver_sm written, a re-offer counts again) and
`receipts_acknowledged` (receipts answered with ESME_ROK).

Speed. The simulator must be much faster than the client it measures (bench/smpp.py: tens of
thousands of submit_sm/s on one core), so it is a plain `asyncio.Protocol` and the submit_sm
hot path does as little as it can:

- frames are cut from the read with one `struct.unpack_from` each, without copying the buffer;
- a submit_sm is scanned, not decoded: the C-strings up to registered_delivery and sm_length
  are located with `bytes.index` under the codec's limits, and only the destination address,
  esm_class and registered_delivery are read. A frame that does not scan cleanly, or that
  carries TLVs, goes through the full `pdu.decode`, so malformed input gets exactly the
  codec's error status in a generic_nack;
- the frame is kept raw and decoded only by `messages()` or when its receipt falls due;
- the responses of one read leave in one `transport.write`, stamped with one clock reading;
- a receipt is built when it falls due (not when its submit arrives), receipts due at the same
  delay are drained by one timer, and the Appendix B text of a message body is cached.
"""

from __future__ import annotations

import asyncio
import functools
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
_TLV_HEAD: Final = struct.Struct(">HH")
_HEADER_SIZE: Final = pdu.HEADER_SIZE
_MAX_PDU_SIZE: Final = pdu.MAX_PDU_SIZE
_RESP_BIT: Final = 0x80000000
_MAX_SEQUENCE: Final = 0x7FFFFFFF
_SUBMIT_SM: Final = int(pdu.CommandId.SUBMIT_SM)
_SUBMIT_SM_RESP: Final = int(pdu.CommandId.SUBMIT_SM_RESP)
_DELIVER_SM: Final = int(pdu.CommandId.DELIVER_SM)
_ESME_ROK: Final = int(pdu.CommandStatus.ESME_ROK)
_ESME_RINVCMDLEN: Final = int(pdu.CommandStatus.ESME_RINVCMDLEN)
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
# Receipt text is built from at most this many characters of the original message.
_RECEIPT_TEXT_CHARS: Final = 20

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
    """A submit_sm as received: the raw frame, decoded lazily by `messages()` and receipts."""

    message_id: str
    system_id: str
    frame: bytes
    destination: str
    received_at: float


@dataclass(slots=True)
class _Owed:
    """A deliver_sm to send or sent and not yet answered: a receipt, or an MO with its waiter.

    `body` is the deliver_sm without its header (the sequence number changes on every
    attempt). A receipt's body is built from `receipt_for` when it first falls due.
    """

    system_id: str
    body: bytes | None
    receipt_for: _Received | None
    waiter: asyncio.Future[int] | None


def _scan_submit(frame: bytes) -> tuple[str, int, int]:
    """(destination_addr, esm_class, registered_delivery) of a complete submit_sm frame.

    Locates every field up to short_message with the codec's length limits, so a frame that
    passes is one `pdu.decode` accepts; anything else (or TLVs, which this does not check) is
    handed to `pdu.decode`, which raises the precise PduError.
    """
    end = len(frame)
    index = frame.index
    try:
        # service_type (6), source ton/npi, source_addr (21), dest ton/npi, destination (21)
        pos = index(0, 16, min(22, end)) + 3
        pos = index(0, pos, min(pos + 21, end)) + 3
        nul = index(0, pos, min(pos + 21, end))
        destination = frame[pos:nul].decode("latin-1")
        esm_class = frame[nul + 1]
        # esm_class, protocol_id, priority_flag; schedule_delivery_time and validity (17)
        pos = index(0, nul + 4, min(nul + 21, end)) + 1
        pos = index(0, pos, min(pos + 17, end)) + 1
        registered_delivery = frame[pos]
        # registered_delivery, replace_if_present, data_coding, sm_default_msg_id, sm_length
        sm_end = pos + 5 + frame[pos + 4]
    except (ValueError, IndexError):
        sm_end = -1
    if sm_end != end or sm_end - pos - 5 > _MAX_SHORT_MESSAGE:
        submit = pdu.decode(frame)  # raises PduError for anything malformed
        if not isinstance(submit, pdu.SubmitSm):  # the header said submit_sm
            raise pdu.PduError(pdu.CommandStatus.ESME_RINVCMDID, "not a submit_sm")
        return submit.destination_addr, submit.esm_class, submit.registered_delivery
    return destination, esm_class, registered_delivery


class _Session(asyncio.Protocol):
    def __init__(self, smsc: SmscSimulator) -> None:
        self._smsc = smsc
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self.system_id: str | None = None
        self.can_transmit = False
        self.can_receive = False
        self._sequence = itertools.count(1)
        self.owed: dict[int, _Owed] = {}
        # response_delay_s: (due, responses of one read), in arrival order, and its one timer.
        self._delayed: deque[tuple[float, bytes]] = deque()
        self._delayed_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_server always hands a stream protocol a stream transport (uvloop's is not an
        # asyncio.Transport subclass, but has the same methods).
        self.transport = cast(asyncio.Transport, transport)
        self._smsc._sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._closing = True
        if self._delayed_timer is not None:
            self._delayed_timer.cancel()
            self._delayed_timer = None
        self._delayed.clear()
        self._smsc._session_closed(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._rest + data if self._rest else data
        end = len(buffer)
        pos = 0
        unpack = _HEADER.unpack_from
        smsc = self._smsc
        # Tests may wrap `_submit` (the decoded form) on the instance to watch or refuse
        # submits; then every submit_sm is decoded and goes through it.
        submit = smsc._submit_decoded if "_submit" in vars(smsc) else smsc._submit_frame
        delay_s = smsc.response_delay_s
        out = self._out
        # Responses to submit_sm: straight into `out`, or held back when they are delayed.
        responses = out
        due = 0.0
        if delay_s > 0:
            responses = []
            due = asyncio.get_running_loop().time() + delay_s
        # Every frame of one read arrived at the same moment.
        received_at = time.time()
        while end - pos >= _HEADER_SIZE:
            length, cid, _status, seq = unpack(buffer, pos)
            if length < _HEADER_SIZE or length > _MAX_PDU_SIZE:
                # A bad command_length: the stream cannot be re-framed, so say why and hang up.
                out.append(_header_only(pdu.CommandId.GENERIC_NACK, _ESME_RINVCMDLEN, seq))
                self._rest = b""
                self._flush()
                self._close()
                return
            if end - pos < length:
                break
            frame = buffer[pos : pos + length]
            pos += length
            if cid == _SUBMIT_SM and self.can_transmit:
                try:
                    response = submit(cast(str, self.system_id), frame, seq, received_at)
                except pdu.PduError as error:
                    out.append(_nack(error, seq))
                    continue
                if response is not None:
                    responses.append(response)
            else:
                self._handle(cid, seq, frame, responses)
                if self._closing:
                    break
        self._rest = buffer[pos:] if pos < end else b""
        if responses is not out and responses:
            self._delay(b"".join(responses), due)
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
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _delay(self, data: bytes, due: float) -> None:
        self._delayed.append((due, data))
        if self._delayed_timer is None:
            loop = asyncio.get_running_loop()
            self._delayed_timer = loop.call_at(due, self._release_delayed)

    def _release_delayed(self) -> None:
        self._delayed_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            self._out.append(delayed.popleft()[1])
        self._flush()
        if delayed:
            self._delayed_timer = loop.call_at(delayed[0][0], self._release_delayed)

    def next_sequence(self) -> int:
        seq = next(self._sequence)
        if seq > _MAX_SEQUENCE:
            self._sequence = itertools.count(2)
            seq = 1
        return seq

    def send_deliver(self, owed: _Owed) -> None:
        body = owed.body
        if body is None:  # _offer builds receipts before they get here
            return
        seq = self.next_sequence()
        self.owed[seq] = owed
        self._send(_HEADER.pack(_HEADER_SIZE + len(body), _DELIVER_SM, 0, seq) + body)
        if owed.waiter is None:
            self._smsc.receipts_sent += 1

    # -- dispatch ---------------------------------------------------------------------------

    def _handle(self, cid: int, seq: int, frame: bytes, responses: list[bytes]) -> None:
        """Everything but a submit_sm on a session that may submit (data_received does those)."""
        if cid == pdu.CommandId.ENQUIRE_LINK:
            # Allowed in every session state (SMPP 3.4 section 2.3).
            self._out.append(_header_only(pdu.CommandId.ENQUIRE_LINK_RESP, 0, seq))
            return
        if cid & _RESP_BIT:
            self._handle_response(seq, _HEADER.unpack_from(frame)[2])
            return
        if cid in _BIND_RESP:
            self._handle_bind(frame, cid, seq)
            return
        if self.system_id is None:
            status = pdu.CommandStatus.ESME_RINVBNDSTS
            response = _header_only(cid | _RESP_BIT, status, seq)
            (responses if cid == _SUBMIT_SM else self._out).append(response)
            return
        if cid == _SUBMIT_SM:  # bound, but as a receiver
            responses.append(_submit_resp(seq, pdu.CommandStatus.ESME_RINVBNDSTS))
            return
        if cid == pdu.CommandId.UNBIND:
            self._out.append(_header_only(pdu.CommandId.UNBIND_RESP, 0, seq))
            self._flush()
            self._close()
            return
        # query_sm, data_sm, cancel_sm, ... are outside what the channel uses.
        status = pdu.CommandStatus.ESME_RINVCMDID
        self._out.append(_header_only(pdu.CommandId.GENERIC_NACK, status, seq))

    def _handle_response(self, seq: int, status: int) -> None:
        owed = self.owed.pop(seq, None)
        if owed is None:
            return
        if owed.waiter is not None:
            if not owed.waiter.done():
                owed.waiter.set_result(status)
        elif status == _ESME_ROK:
            self._smsc.receipts_acknowledged += 1
        elif status in _RETRY_STATUSES:
            self._smsc._schedule(owed, self._smsc.receipt_delay_s)

    def _handle_bind(self, frame: bytes, cid: int, seq: int) -> None:
        resp_class = _BIND_RESP[cid]
        try:
            bind = pdu.decode(frame)
        except pdu.PduError as error:
            self._out.append(_nack(error, seq))
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
        self._out.append(pdu.encode(resp))
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
        offer = self._smsc._offer
        while due and due[0][0] <= now:
            offer(due.popleft()[1])
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
        response_delay_s: float = 0.0,
    ) -> None:
        if response_delay_s < 0:
            raise ValueError("response_delay_s must be >= 0")
        self._host = host
        self._requested_port = port
        self._port = 0
        self.system_id = system_id
        self.password = password
        self.receipt_delay_s = receipt_delay_s
        self.slow_receipt_delay_s = slow_receipt_delay_s
        self.response_delay_s = response_delay_s
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
        self.submitted_count = 0
        self.receipts_sent = 0
        self.receipts_acknowledged = 0

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
        frame = pdu.encode(deliver)
        session.send_deliver(_Owed(self.system_id, frame[_HEADER_SIZE:], None, waiter))
        return await waiter

    # -- internals --------------------------------------------------------------------------

    def _submit_frame(
        self, system_id: str, frame: bytes, seq: int, received_at: float
    ) -> bytes | None:
        """The hot path: one submit_sm from a bound transmitter. Raises PduError if malformed."""
        destination, _esm_class, registered_delivery = _scan_submit(frame)
        return self._accept(system_id, frame, seq, received_at, destination, registered_delivery)

    def _submit_decoded(
        self, system_id: str, frame: bytes, seq: int, received_at: float
    ) -> bytes | None:
        submit = pdu.decode(frame)
        if not isinstance(submit, pdu.SubmitSm):  # the header said submit_sm
            raise pdu.PduError(pdu.CommandStatus.ESME_RINVCMDID, "not a submit_sm", seq)
        return self._submit(system_id, submit)

    def _submit(self, system_id: str, submit: pdu.SubmitSm) -> bytes | None:
        """One decoded submit_sm: the slow form of the hot path, kept for tests that wrap it."""
        frame = pdu.encode(submit)  # decode -> encode is byte for byte
        return self._accept(
            system_id,
            frame,
            submit.sequence_number,
            time.time(),
            submit.destination_addr,
            submit.registered_delivery,
        )

    def _accept(
        self,
        system_id: str,
        frame: bytes,
        seq: int,
        received_at: float,
        destination: str,
        registered_delivery: int,
    ) -> bytes | None:
        if self._throttle_next > 0:
            self._throttle_next -= 1
            return _submit_resp(seq, pdu.CommandStatus.ESME_RTHROTTLED)
        digits = outcome_digits(destination)
        if digits is not None and "90" < digits < "96":  # the scripted outcomes 91..95
            if digits == "91":
                return _submit_resp(seq, pdu.CommandStatus.ESME_RSUBMITFAIL)
            if digits == "92" and destination not in self._throttled_once:
                self._throttled_once.add(destination)
                return _submit_resp(seq, pdu.CommandStatus.ESME_RTHROTTLED)
        # Zero-padded on purpose: the ESME must keep provider ids as opaque text.
        message_id = f"{next(self._message_ids):010d}"
        self.submitted_count += 1
        received = _Received(message_id, system_id, frame, destination, received_at)
        self._messages.append(received)
        if registered_delivery & 1 and digits != "93" and digits != "94":
            delay = self.slow_receipt_delay_s if digits == "95" else self.receipt_delay_s
            self._schedule(_Owed(system_id, None, received, None), delay)
        if digits == "93":
            return None
        body = message_id.encode("ascii") + b"\0"
        return _HEADER.pack(_HEADER_SIZE + len(body), _SUBMIT_SM_RESP, 0, seq) + body

    def _schedule(self, owed: _Owed, delay_s: float) -> None:
        timer = self._timers.get(delay_s)
        if timer is None:
            timer = self._timers[delay_s] = _ReceiptTimer(self, delay_s)
        timer.add(owed)

    def _offer(self, owed: _Owed) -> None:
        if owed.body is None and owed.receipt_for is not None:
            # Built when first due, so the done date is when the receipt became due; a receipt
            # offered again keeps it, as a real SMSC's would.
            owed.body = _receipt_body(owed.receipt_for)
        session = self._pick_receiver(owed.system_id)
        if session is None:
            self._waiting.setdefault(owed.system_id, deque(maxlen=self._max_stored)).append(owed)
        else:
            session.send_deliver(owed)

    def _pick_receiver(self, system_id: str) -> _Session | None:
        receivers = self._receivers.get(system_id)
        if not receivers:
            return None
        if len(receivers) == 1:
            return receivers[0]
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
                self._offer(item)


def _header_only(command_id: int, status: int, sequence: int) -> bytes:
    return _HEADER.pack(_HEADER_SIZE, command_id, status, sequence)


def _submit_resp(sequence: int, status: int) -> bytes:
    # SMPP 3.4 section 4.4.2: an error submit_sm_resp carries no body.
    return _header_only(_SUBMIT_SM_RESP, status, sequence)


def _nack(error: pdu.PduError, sequence: int) -> bytes:
    seq = error.sequence_number if error.sequence_number is not None else sequence
    return _header_only(pdu.CommandId.GENERIC_NACK, error.status, seq)


@functools.lru_cache(maxsize=1024)
def _minute(timestamp_minute: int) -> str:
    """YYMMDDhhmm of a Unix time given in whole minutes (receipts in one minute share it)."""
    return datetime.fromtimestamp(timestamp_minute * 60, UTC).strftime("%y%m%d%H%M")


@functools.lru_cache(maxsize=4096)
def _receipt_text(data_coding: int, esm_class: int, short_message: bytes) -> bytes:
    """The `text:` field of a receipt: the first 20 characters, GSM-7, '?' for the rest."""
    original = _decoded_text(data_coding, esm_class, short_message) or ""
    safe = "".join(ch if sms_text.is_gsm7(ch) else "?" for ch in original[:_RECEIPT_TEXT_CHARS])
    return sms_text.encode(safe, "GSM-7")


def _receipt_body(received: _Received) -> bytes:
    """A receipt deliver_sm for `received`, without its header, built from the raw submit_sm.

    The addresses are copied as they arrived (ton, npi and C-string), swapped: the receipt
    comes from the destination and goes to the source.
    """
    frame = received.frame
    index = frame.index
    # The frame passed the scan, so every NUL below exists within the codec's limits.
    source = index(0, _HEADER_SIZE) + 1  # source_addr_ton, source_addr_npi, source_addr
    destination = index(0, source + 2) + 1  # dest_addr_ton, dest_addr_npi, destination_addr
    esm = index(0, destination + 2) + 1  # esm_class, protocol_id, priority_flag
    pos = index(0, index(0, esm + 3) + 1) + 1  # past both dates: registered_delivery
    esm_class = frame[esm]
    data_coding = frame[pos + 2]
    short_message = frame[pos + 5 : pos + 5 + frame[pos + 4]]
    if not short_message and pos + 5 < len(frame):
        submit = pdu.decode(frame)
        short_message = getattr(submit, "tlvs", {}).get(pdu.Tag.MESSAGE_PAYLOAD, b"")
    delivered = outcome_digits(received.destination) != "90"
    stat, err, dlvrd = ("DELIVRD", "000", "001") if delivered else ("UNDELIV", "001", "000")
    # Everything but the text is digits, letters, ':' and ' ', the same octets in GSM-7 and
    # ASCII, so only the text needs the GSM-7 encoder.
    head = (
        f"id:{received.message_id} sub:001 dlvrd:{dlvrd} "
        f"submit date:{_minute(int(received.received_at // 60))} "
        f"done date:{_minute(int(time.time() // 60))} stat:{stat} err:{err} text:"
    )
    text = (head.encode("ascii") + _receipt_text(data_coding, esm_class, short_message))[
        :_MAX_SHORT_MESSAGE
    ]
    message_id = received.message_id.encode("ascii") + b"\0"
    state = _MESSAGE_STATE_DELIVERED if delivered else _MESSAGE_STATE_UNDELIVERABLE
    return b"".join(
        (
            b"\0",  # service_type
            frame[destination:esm],  # becomes source_addr_ton, _npi, source_addr
            frame[source:destination],  # becomes dest_addr_ton, _npi, destination_addr
            # esm_class 0x04 (SMSC delivery receipt), protocol_id, priority_flag, both dates
            # empty, registered_delivery, replace_if_present_flag, data_coding 0 (GSM-7),
            # sm_default_msg_id
            b"\x04\x00\x00\x00\x00\x00\x00\x00\x00",
            bytes((len(text),)),
            text,
            _TLV_HEAD.pack(pdu.Tag.RECEIPTED_MESSAGE_ID, len(message_id)),
            message_id,
            _TLV_HEAD.pack(pdu.Tag.MESSAGE_STATE, 1),
            bytes((state,)),
        )
    )


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
    submit = pdu.decode(received.frame)
    if not isinstance(submit, pdu.SubmitSm):  # stored frames are all scanned submit_sm
        raise TypeError("a stored frame is not a submit_sm")
    short_message = submit.short_message or submit.tlvs.get(pdu.Tag.MESSAGE_PAYLOAD, b"")
    udh, _ = _split_udh(submit.esm_class, short_message)
    return {
        "message_id": received.message_id,
        "system_id": received.system_id,
        "source": submit.source_addr,
        "destination": received.destination,
        "data_coding": submit.data_coding,
        "esm_class": submit.esm_class,
        "registered_delivery": submit.registered_delivery,
        "text": _decoded_text(submit.data_coding, submit.esm_class, short_message),
        "udh": None if udh is None else _parse_udh(udh),
        "received_at": datetime.fromtimestamp(received.received_at, UTC).isoformat(),
    }
