"""Channels: one SMPP 3.4 ESME session — one TCP (or TLS) connection, one bind, on asyncio.

Scope. `SmppSession` connects, binds, submits, answers what the SMSC sends, keeps the link
alive and unbinds. Reconnect with backoff, several binds and throughput limits belong to the
connector above it: a session is one connection's life, and once `closed` is set it is done.

Window. At most `window` submit_sm are outstanding (an `asyncio.Semaphore`); a caller waits
for a slot before its PDU is sent. Responses are matched to requests by sequence number in a
dict of futures. Each request has its own response timer (`loop.call_later`, cheaper than a
task per request); a timed-out request gives its slot back so the window cannot shrink to
nothing, and a late response for it is dropped. When the connection drops, every
outstanding request fails with `ConnectionLost` at once, so no caller waits forever.

Receipts and MO. deliver_sm / data_sm are handed to `on_deliver`, and the *_resp carrying
the status it returns is sent only AFTER it returns: the caller stores the receipt or MO
durably first, so a crash in between makes the SMSC redeliver instead of losing it (see
notes/smpp-libraries.md — this is why the session is ours). If `on_deliver` raises, the
answer is ESME_RX_T_APPN, a temporary error the SMSC retries.

Timers. enquire_link is sent when nothing has been received for `enquire_link_interval_s`;
no enquire_link_resp within `response_timeout_s` means the link is dead and the connection
is aborted. Writes made in one event-loop iteration are joined into one send (scheduled with
`call_soon`, so nothing waits longer than the current iteration) and TCP_NODELAY is set, so
small PDUs are never held back by Nagle's algorithm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Literal

from amnex.channels.smpp.pdu import (
    HEADER_SIZE,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
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

__all__ = [
    "BindError",
    "BindType",
    "ConnectionLost",
    "DeliverHandler",
    "NotBound",
    "ResponseTimeout",
    "SessionError",
    "SmppError",
    "SmppSession",
]

log = logging.getLogger(__name__)

BindType = Literal["transceiver", "transmitter", "receiver"]
DeliverHandler = Callable[[DeliverSm | DataSm], Awaitable[CommandStatus]]

_RESP_BIT = 0x80000000
_MAX_SEQUENCE = 0x7FFFFFFF
_READ_SIZE = 1 << 16
_KNOWN_COMMAND_IDS = frozenset(int(c) for c in CommandId)

_BIND_PDUS: dict[str, tuple[type[BindTransceiver | BindTransmitter | BindReceiver], type[Pdu]]] = {
    "transceiver": (BindTransceiver, BindTransceiverResp),
    "transmitter": (BindTransmitter, BindTransmitterResp),
    "receiver": (BindReceiver, BindReceiverResp),
}


class SessionError(Exception):
    """Base class of the errors a session raises."""


class SmppError(SessionError):
    """The SMSC answered with an error: a generic_nack or a malformed response."""

    def __init__(self, status: int, detail: str = "") -> None:
        self.status: int = _as_status(status)
        self.detail = detail
        super().__init__(self.status, detail)

    def __str__(self) -> str:
        name = self.status.name if isinstance(self.status, CommandStatus) else hex(self.status)
        return f"{name}: {self.detail}" if self.detail else name


class BindError(SmppError):
    """The SMSC refused the bind (wrong credentials, system_type, bind type, ...)."""


class ResponseTimeout(SessionError):
    """No response within response_timeout_s; the request may or may not have been accepted."""


class ConnectionLost(SessionError):
    """The connection closed while the request was outstanding (or before it could be sent)."""


class NotBound(SessionError):
    """The session is not bound (not connected yet, unbinding, or closed); nothing was sent."""


def _as_status(value: int) -> int:
    try:
        return CommandStatus(value)
    except ValueError:
        return value


class SmppSession:
    """An ESME session over one connection: `connect()`, `submit()` many times, `unbind()`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        system_id: str,
        password: str,
        system_type: str = "",
        bind: BindType = "transceiver",
        window: int = 50,
        response_timeout_s: float = 10.0,
        enquire_link_interval_s: float = 30.0,
        on_deliver: DeliverHandler | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if bind not in _BIND_PDUS:
            raise ValueError(f"bind must be transceiver, transmitter or receiver, not {bind!r}")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.host = host
        self.port = port
        self.system_id = system_id
        self._password = password
        self.system_type = system_type
        self.bind_type: BindType = bind
        self.window = window
        self.response_timeout_s = response_timeout_s
        self.enquire_link_interval_s = enquire_link_interval_s
        self._on_deliver = on_deliver
        self._tls = tls

        self._window = asyncio.Semaphore(window)
        self._pending: dict[int, asyncio.Future[Pdu]] = {}
        self._sequence = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._write_buffer: list[bytes] = []
        self._flush_scheduled = False
        self._reader_task: asyncio.Task[None] | None = None
        self._enquire_task: asyncio.Task[None] | None = None
        self._deliver_tasks: set[asyncio.Task[None]] = set()
        self._bound = False
        self._accepting = False
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = asyncio.Event()
        self._last_rx = 0.0
        self.smsc_system_id = ""

    # -----------------------------------------------------------------------------------------
    # Public API

    @property
    def is_bound(self) -> bool:
        return self._bound

    @property
    def closed(self) -> asyncio.Event:
        """Set once the connection is gone, whatever the reason."""
        return self._closed

    @property
    def outstanding(self) -> int:
        """submit_sm sent and not yet answered (or timed out)."""
        return self._in_flight

    async def connect(self) -> None:
        """Open the connection and bind; raise BindError if the SMSC refuses.

        The TCP (and TLS) handshake is bounded by response_timeout_s too (TimeoutError).
        """
        if self._writer is not None:
            raise RuntimeError("an SmppSession is one connection; create a new one to reconnect")
        async with asyncio.timeout(self.response_timeout_s):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._tls
            )
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # Explicit, whatever asyncio does by default: a lone submit_sm or *_resp must
            # leave now, not wait for the ACK of the previous segment.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        self._reader_task = asyncio.create_task(self._read_loop(self._reader))

        bind_cls, resp_cls = _BIND_PDUS[self.bind_type]
        request = bind_cls(
            system_id=self.system_id, password=self._password, system_type=self.system_type
        )
        try:
            resp = await self._request(request)
        except SmppError as exc:
            await self.close()
            raise BindError(exc.status, f"bind refused: {exc.detail}") from exc
        except BaseException:
            await self.close()
            raise
        if not isinstance(resp, resp_cls) or resp.command_status != CommandStatus.ESME_ROK:
            await self.close()
            raise BindError(resp.command_status or CommandStatus.ESME_RBINDFAIL, "bind refused")
        self.smsc_system_id = getattr(resp, "system_id", "")
        self._bound = True
        self._accepting = True
        self._enquire_task = asyncio.create_task(self._enquire_loop())

    async def submit(self, pdu: SubmitSm) -> SubmitSmResp:
        """Send a submit_sm and return its response, whatever its command_status.

        Sets ``pdu.sequence_number``. ESME_RTHROTTLED, ESME_RMSGQFUL, ... come back in the
        response; the caller decides whether to slow down or retry. Raises NotBound (nothing
        sent), ResponseTimeout, ConnectionLost, SmppError (generic_nack), or PduError if the
        PDU cannot be encoded (nothing sent).
        """
        if not self._accepting:
            raise NotBound("session is not bound")
        async with self._window:
            # The session may have started unbinding or dropped while we waited for a slot;
            # nothing has been sent yet, so the caller can safely send it elsewhere.
            if not self._accepting:
                raise NotBound("session stopped taking submits")
            self._in_flight += 1
            self._drained.clear()
            try:
                resp = await self._request(pdu)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._drained.set()
        if not isinstance(resp, SubmitSmResp):
            raise SmppError(
                CommandStatus.ESME_RINVCMDID,
                f"expected submit_sm_resp, got {type(resp).__name__}",
            )
        return resp

    async def unbind(self) -> None:
        """Graceful end: stop taking submits, let outstanding ones finish, unbind, close.

        Waiting for outstanding submits and receipt handlers, and for unbind_resp, is each
        bounded by response_timeout_s.
        """
        if self._closed.is_set():
            return
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.response_timeout_s):
                await self._drained.wait()
        # Receipt handlers still storing: their *_resp should reach the SMSC before the unbind,
        # or it will redeliver what we already stored.
        if self._deliver_tasks:
            await asyncio.wait(set(self._deliver_tasks), timeout=self.response_timeout_s)
        if not self._closed.is_set():
            with contextlib.suppress(SessionError, PduError):
                await self._request(Unbind())
        await self.close()

    async def close(self) -> None:
        """Close the connection now, without unbind; outstanding requests get ConnectionLost."""
        self._shutdown(ConnectionLost("session closed"))
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait({task})

    # -----------------------------------------------------------------------------------------
    # Requests and writes

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % _MAX_SEQUENCE + 1
        return self._sequence

    async def _request(self, pdu: Pdu) -> Pdu:
        if self._closed.is_set():
            raise ConnectionLost("connection is closed")
        seq = self._next_sequence()
        pdu.sequence_number = seq
        data = encode(pdu)  # a PduError here means nothing was sent
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Pdu] = loop.create_future()
        self._pending[seq] = fut
        self._write(data)
        timer = loop.call_later(self.response_timeout_s, self._expire, seq)
        try:
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(seq, None)

    def _expire(self, seq: int) -> None:
        fut = self._pending.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_exception(
                ResponseTimeout(f"no response to sequence {seq} in {self.response_timeout_s}s")
            )

    def _write(self, data: bytes) -> None:
        self._write_buffer.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        buffer = self._write_buffer
        if not buffer:
            return
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        writer = self._writer
        # Flow control: the window bounds what is buffered for submits, so no drain() here.
        if writer is not None and not writer.is_closing():
            writer.write(data)

    def _send_nack(self, status: int, seq: int) -> None:
        self._write(encode(GenericNack(seq, status)))

    # -----------------------------------------------------------------------------------------
    # Reading

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        reason = "connection closed by the SMSC"
        try:
            while True:
                chunk = await reader.read(_READ_SIZE)
                if not chunk:
                    return
                buf += chunk
                pos = 0
                end = len(buf)
                while end - pos >= HEADER_SIZE:
                    try:
                        header = read_header(buf[pos : pos + HEADER_SIZE] if pos else buf)
                    except PduError as exc:
                        # A bad command_length leaves no way to find the next frame.
                        self._send_nack(exc.status, exc.sequence_number or 0)
                        reason = f"unframeable stream: {exc}"
                        return
                    assert header is not None  # noqa: S101 - at least HEADER_SIZE octets
                    length = header.command_length
                    if end - pos < length:
                        break
                    self._handle(
                        bytes(buf[pos : pos + length]), header.command_id, header.sequence_number
                    )
                    pos += length
                del buf[:pos]
        except (OSError, ssl.SSLError) as exc:
            reason = f"connection error: {exc}"
        finally:
            self._shutdown(ConnectionLost(reason))

    def _handle(self, frame: bytes, cid: int, seq: int) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        is_response = bool(cid & _RESP_BIT) and cid in _KNOWN_COMMAND_IDS
        try:
            pdu = decode(frame)
        except PduError as exc:
            if is_response and cid != CommandId.GENERIC_NACK:
                # Never nack a response (two peers could nack each other forever); fail the
                # request it answers instead.
                self._resolve(seq, SmppError(exc.status, f"malformed response: {exc}"))
            else:
                log.warning("smpp %s: malformed PDU from SMSC: %s", self.system_id, exc)
                self._send_nack(exc.status, seq)
            return
        if is_response:
            if cid == CommandId.GENERIC_NACK:
                self._resolve(seq, SmppError(pdu.command_status, "generic_nack"))
            else:
                self._resolve(seq, pdu)
        elif isinstance(pdu, DeliverSm | DataSm):
            task = asyncio.create_task(self._deliver(pdu))
            self._deliver_tasks.add(task)
            task.add_done_callback(self._deliver_tasks.discard)
        elif isinstance(pdu, EnquireLink):
            self._write(encode(EnquireLinkResp(seq)))
        elif isinstance(pdu, Unbind):
            self._write(encode(UnbindResp(seq)))
            self._shutdown(ConnectionLost("unbound by the SMSC"))
        else:
            # An SMSC has no business sending submit_sm, bind, outbind, ... to a bound ESME.
            self._send_nack(CommandStatus.ESME_RINVCMDID, seq)

    def _resolve(self, seq: int, result: Pdu | SessionError) -> None:
        fut = self._pending.pop(seq, None)
        if fut is None or fut.done():
            # A response after its timeout, or for a sequence we never sent: nobody waits.
            log.debug("smpp %s: unmatched response for sequence %d", self.system_id, seq)
            return
        if isinstance(result, SessionError):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    async def _deliver(self, pdu: DeliverSm | DataSm) -> None:
        # Without a handler nothing can be stored, so refuse temporarily rather than ack a
        # receipt into the void.
        status: int = CommandStatus.ESME_RX_T_APPN
        if self._on_deliver is not None:
            try:
                status = await self._on_deliver(pdu)
            except Exception:
                # Not stored, so not acknowledged: a temporary error makes the SMSC retry.
                log.exception("smpp %s: on_deliver failed", self.system_id)
                status = CommandStatus.ESME_RX_T_APPN
        if self._closed.is_set():
            return  # no ack possible; the SMSC redelivers on the next bind
        resp: Pdu
        if isinstance(pdu, DeliverSm):
            resp = DeliverSmResp(pdu.sequence_number, status)
        else:
            resp = DataSmResp(pdu.sequence_number, status)
        self._write(encode(resp))

    # -----------------------------------------------------------------------------------------
    # Timers and teardown

    async def _enquire_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed.is_set():
            idle_for = loop.time() - self._last_rx
            if idle_for < self.enquire_link_interval_s:
                await asyncio.sleep(self.enquire_link_interval_s - idle_for)
                continue
            try:
                await self._request(EnquireLink())
            except ResponseTimeout:
                log.warning("smpp %s: no enquire_link_resp, closing", self.system_id)
                self._shutdown(ConnectionLost("no enquire_link_resp"), abort=True)
                return
            except SessionError:
                return
            self._last_rx = loop.time()

    def _shutdown(self, reason: SessionError, *, abort: bool = False) -> None:
        if self._closed.is_set():
            return
        self._bound = False
        self._accepting = False
        pending = list(self._pending.values())
        self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(ConnectionLost(str(reason)))
        current = asyncio.current_task()
        for task in (self._enquire_task, self._reader_task):
            if task is not None and task is not current:
                task.cancel()
        writer = self._writer
        if writer is not None:
            if abort:
                self._write_buffer.clear()
                writer.transport.abort()
            else:
                self._flush()  # an unbind_resp or last *_resp must still go out
                writer.close()
        self._closed.set()
