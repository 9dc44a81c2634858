"""The SMSC simulator as its own process, with a loopback control API for the chaos scenarios.

`amnex simulate smsc` runs the same `SmscSimulator` but has no control channel: its fault
injection (`disconnect_all`, `throttle_next`) and its record of received submits are reachable
only in-process (and `/_dev/smsc/messages` exists only under `amnex dev`). This wrapper starts
the simulator exactly as that command does and adds a tiny HTTP/1.1 control API on loopback:

    GET  /stats          counters, bound sessions and receipts still owed (JSON)
    GET  /record         every submit_sm received (id, text, received_at), the ids of the
                         receipts it offered, and when each SMPP connection ended (JSON)
    POST /disconnect     abort every SMPP connection now (`disconnect_all`)
    POST /throttle/<n>   answer the next n submit_sm with ESME_RTHROTTLED (`throttle_next`)
    POST /throttle-for/<ms>  answer every submit_sm with ESME_RTHROTTLED for the next ms
                         milliseconds (what a carrier over its rate does: a time, not a count)

    python bench/chaos/smsc_process.py --smpp-port P --control-port C [--receipt-delay-ms 50]
        [--response-delay-ms 0] [--max-stored 100000]

It prints "ready" once both listen, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from datetime import datetime
from typing import Any

from amnex.channels.smpp import pdu
from amnex.simulators.smsc import SmscSimulator, _Owed, _Session, _submit_resp

HOST = "127.0.0.1"


class RecordingSmsc(SmscSimulator):
    """The simulator, also noting which submit ids it offered a receipt for.

    `_offer` is where every receipt (first offer and every re-offer after a dropped bind)
    goes; reading the private queues below is what "owed" means for this bench only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receipt_ids: set[str] = set()
        # When each SMPP connection ended (time.time()), whoever ended it: a submit in
        # flight on it has an unknown outcome for the ESME, so it may be sent again.
        self.session_ends: list[float] = []
        self.throttle_until = 0.0  # time.monotonic(): submits are throttled until then
        self.throttled_for_time = 0

    def _session_closed(self, session: _Session) -> None:
        self.session_ends.append(time.time())
        super()._session_closed(session)

    def _accept(
        self,
        system_id: str,
        frame: bytes,
        seq: int,
        received_at: float,
        destination: str,
        registered_delivery: int,
    ) -> bytes | None:
        if time.monotonic() < self.throttle_until:
            self.throttled_for_time += 1
            return _submit_resp(seq, pdu.CommandStatus.ESME_RTHROTTLED)
        return super()._accept(system_id, frame, seq, received_at, destination, registered_delivery)

    def _offer(self, owed: _Owed) -> None:
        if owed.receipt_for is not None:
            self.receipt_ids.add(owed.receipt_for.message_id)
        super()._offer(owed)

    def receipts_owed(self) -> dict[str, int]:
        """Receipts not answered yet: scheduled, waiting for a bind, sent and unanswered."""
        scheduled = sum(len(timer._due) for timer in self._timers.values())
        waiting = sum(len(queue) for queue in self._waiting.values())
        unanswered = sum(
            1 for session in self._sessions for owed in session.owed.values() if owed.waiter is None
        )
        return {"scheduled": scheduled, "waiting": waiting, "unanswered": unanswered}


async def serve_control(smsc: RecordingSmsc, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                method, path, _ = head.split("\r\n", 1)[0].split(" ")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                status, payload = answer(smsc, method, path)
                body = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, HOST, port)


def answer(smsc: RecordingSmsc, method: str, path: str) -> tuple[int, Any]:
    if method == "GET" and path == "/stats":
        return 200, {
            "submitted": smsc.submitted_count,
            "receipts_sent": smsc.receipts_sent,
            "receipts_acknowledged": smsc.receipts_acknowledged,
            "bound_sessions": smsc.bound_sessions,
            "receipts_owed": smsc.receipts_owed(),
            "throttled_for_time": smsc.throttled_for_time,
        }
    if method == "GET" and path == "/record":
        submits = [
            [m["message_id"], m["text"], datetime.fromisoformat(m["received_at"]).timestamp()]
            for m in smsc.messages()
        ]
        return 200, {
            "submits": submits,
            "receipt_ids": sorted(smsc.receipt_ids),
            "session_ends": smsc.session_ends,
        }
    if method == "POST" and path == "/disconnect":
        bound = smsc.bound_sessions
        smsc.disconnect_all()
        return 200, {"disconnected": bound}
    if method == "POST" and path.startswith("/throttle/"):
        n = int(path.removeprefix("/throttle/"))
        smsc.throttle_next(n)
        return 200, {"throttle_next": n}
    if method == "POST" and path.startswith("/throttle-for/"):
        ms = int(path.removeprefix("/throttle-for/"))
        smsc.throttle_until = time.monotonic() + ms / 1000
        return 200, {"throttle_for_ms": ms}
    return 404, {"error": "unknown"}


async def run(args: argparse.Namespace) -> None:
    smsc = RecordingSmsc(
        HOST,
        args.smpp_port,
        receipt_delay_s=args.receipt_delay_ms / 1000,
        response_delay_s=args.response_delay_ms / 1000,
        max_stored=args.max_stored,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await smsc.start()
    control = await serve_control(smsc, args.control_port)
    try:
        print("ready", flush=True)
        await stop.wait()
    finally:
        control.close()
        await smsc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smpp-port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--receipt-delay-ms", type=int, default=50)
    parser.add_argument("--response-delay-ms", type=int, default=0)
    parser.add_argument("--max-stored", type=int, default=100_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
