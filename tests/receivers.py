"""A tiny HTTP/1.1 receiver on loopback for webhook tests: its answer depends on the path (or
on what a test sets), and it records every request it got."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 408: "Request Timeout", 410: "Gone"}
REASONS |= {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server whose answer depends on the path; it records what it got."""

    ssl_context: ssl.SSLContext | None = None
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    # Answer every request with this status, whatever the path (a test changes it mid-way).
    answer_with: int | None = None
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.ssl_context
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await self._read(reader)
                self.requests.append(request)
                writer.write(await self._answer(request.path))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Received:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.strip().split("\r\n")
        method, path, _version = request_line.split(" ")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Received(method, path, headers, body)

    async def _answer(self, path: str) -> bytes:
        body = b"ok"
        extra: list[str] = []
        if self.answer_with is not None:
            path = f"/status/{self.answer_with}"
        match path:
            case "/hang":
                await asyncio.Event().wait()
                status = 200
            case "/redirect":
                status = 302
                extra.append(f"Location: http://127.0.0.1:{self.port}/ok")
            case "/busy":
                status = 429
                extra.append("Retry-After: 7")
            case "/unavailable":
                status = 503
                later = datetime.now(UTC) + timedelta(seconds=120)
                extra.append(f"Retry-After: {format_datetime(later, usegmt=True)}")
            case "/big":
                status = 200
                body = b"x" * (1024 * 1024)
            case _ if path.startswith("/status/"):
                status = int(path.removeprefix("/status/"))
            case _:
                status = 200
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        head += [f"Content-Length: {len(body)}", *extra]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body
