"""Bench: the minimal SMPP peers that `smpp.py` measures against — framing and nothing else.

`RawClient` binds, then keeps `window` pre-encoded submit_sm in flight: every read is cut into
frames by their 16-octet header alone, and one write sends as many new submit_sm as responses
arrived. It answers deliver_sm (receipts) with a header-only deliver_sm_resp and counts them.
`RawServer` answers a bind with a bind_*_resp and every submit_sm with an empty-id
submit_sm_resp, parsing nothing but the header. Neither imports Amnex: the PDUs are built by
hand here, so the client is an independent peer for the simulator, and the pair is the
ceiling for SMPP framing over loopback in Python on this machine.

Every wait is bounded by the caller (`asyncio.timeout`); nothing here loops without a count.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import Final, cast

HEADER: Final = struct.Struct(">IIII")
HEADER_SIZE: Final = 16
BIND_TRANSMITTER: Final = 0x00000002
BIND_TRANSCEIVER: Final = 0x00000009
SUBMIT_SM: Final = 0x00000004
SUBMIT_SM_RESP: Final = 0x80000004
DELIVER_SM: Final = 0x00000005
DELIVER_SM_RESP: Final = 0x80000005
ENQUIRE_LINK: Final = 0x00000015
ENQUIRE_LINK_RESP: Final = 0x80000015
RESP_BIT: Final = 0x80000000
# The outcome digits 90..95 script failures in the simulator; stay below them.
DESTINATIONS: Final = tuple(f"49151000000{n:02d}" for n in range(90))
TEXT: Final = b"Your code is 123456. Do not share it."


def cstring(value: str) -> bytes:
    return value.encode("latin-1") + b"\0"


def bind_frame(cid: int, sequence: int, system_id: str, password: str) -> bytes:
    body = cstring(system_id) + cstring(password) + cstring("") + bytes((0x34, 0, 0)) + b"\0"
    return HEADER.pack(HEADER_SIZE + len(body), cid, 0, sequence) + body


def submit_frames(first_sequence: int, count: int, registered_delivery: int) -> list[bytes]:
    """`count` submit_sm frames, sequence numbers from `first_sequence`, cycling destinations."""
    bodies = []
    for destination in DESTINATIONS:
        bodies.append(
            cstring("")  # service_type
            + bytes((5, 0))
            + cstring("Amnex")
            + bytes((1, 1))
            + cstring(destination)
            + bytes((0, 0, 0))  # esm_class, protocol_id, priority_flag
            + cstring("")  # schedule_delivery_time
            + cstring("")  # validity_period
            + bytes((registered_delivery, 0, 0, 0, len(TEXT)))
            + TEXT
        )
    frames = []
    for i in range(count):
        body = bodies[i % len(bodies)]
        frames.append(HEADER.pack(HEADER_SIZE + len(body), SUBMIT_SM, 0, first_sequence + i) + body)
    return frames


class RawClient(asyncio.Protocol):
    """One bind, `window` submit_sm in flight, `warmup` then `measured` of them.

    `started_at` is when the warm-up's last response arrived, `finished_at` when the last
    response (and, with `wait_receipts`, the last receipt) arrived. `on_measure_start` runs at
    `started_at` so the caller can sample CPU counters at the same instant.
    """

    def __init__(
        self,
        *,
        warmup: int,
        measured: int,
        window: int,
        registered_delivery: int,
        wait_receipts: bool,
        on_measure_start: Callable[[], None],
        bind_cid: int = BIND_TRANSMITTER,
    ) -> None:
        self.total = warmup + measured
        self.warmup = warmup
        self.window = window
        self.wait_receipts = wait_receipts
        self.on_measure_start = on_measure_start
        self.bind_cid = bind_cid
        self.frames = submit_frames(2, self.total, registered_delivery)
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.receipts = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, but behaves as one).
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(bind_frame(self.bind_cid, 1, "amnex", "secret"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

    def _send_next(self, count: int) -> None:
        start = self.sent
        stop = min(start + count, self.total)
        if stop > start and self.transport is not None:
            self.sent = stop
            self.transport.write(b"".join(self.frames[start:stop]))

    def _check_done(self) -> None:
        if self.acked < self.total or self.done.done():
            return
        if self.wait_receipts and self.receipts < self.total:
            return
        self.finished_at = time.perf_counter()
        self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        unpack = HEADER.unpack_from
        pos = 0
        end = len(buffer)
        acked = 0
        replies: list[bytes] = []
        while end - pos >= HEADER_SIZE:
            length, cid, status, seq = unpack(buffer, pos)
            if end - pos < length:
                break
            pos += length
            if cid == SUBMIT_SM_RESP:
                acked += 1
                if status:
                    self.errors += 1
            elif cid == DELIVER_SM:
                self.receipts += 1
                replies.append(HEADER.pack(HEADER_SIZE + 1, DELIVER_SM_RESP, 0, seq) + b"\0")
            elif cid == ENQUIRE_LINK:
                replies.append(HEADER.pack(HEADER_SIZE, ENQUIRE_LINK_RESP, 0, seq))
            elif cid == self.bind_cid | RESP_BIT:
                if status:
                    self.done.set_exception(ConnectionError(f"bind refused: 0x{status:x}"))
                    return
                self._send_next(self.window)
            elif cid & RESP_BIT == 0:
                replies.append(HEADER.pack(HEADER_SIZE, 0x80000000, 3, seq))  # generic_nack
        self._buffer = buffer[pos:]
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
        if acked:
            before = self.acked
            self.acked = before + acked
            if before < self.warmup <= self.acked:
                self.started_at = time.perf_counter()
                self.on_measure_start()
            self._send_next(acked)
        self._check_done()


class RawServer(asyncio.Protocol):
    """Parses headers only: bind -> bind_resp, submit_sm -> empty-id submit_sm_resp."""

    count = 0  # submit_sm answered, over all connections

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, but behaves as one).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        unpack = HEADER.unpack_from
        pack = HEADER.pack
        pos = 0
        end = len(buffer)
        out: list[bytes] = []
        while end - pos >= HEADER_SIZE:
            length, cid, _status, seq = unpack(buffer, pos)
            if end - pos < length:
                break
            pos += length
            if cid == SUBMIT_SM:
                # Header plus an empty message_id: the smallest valid submit_sm_resp.
                out.append(pack(HEADER_SIZE + 1, SUBMIT_SM_RESP, 0, seq) + b"\0")
                RawServer.count += 1
            elif cid in (1, BIND_TRANSMITTER, BIND_TRANSCEIVER):
                body = cstring("raw")
                out.append(pack(HEADER_SIZE + len(body), cid | RESP_BIT, 0, seq) + body)
            elif cid & RESP_BIT == 0:
                out.append(pack(HEADER_SIZE, cid | RESP_BIT, 0, seq))
        self._buffer = buffer[pos:]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
