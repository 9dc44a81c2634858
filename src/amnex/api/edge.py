"""API: the edge middleware — request ids, body size limit, TLS policy and HSTS, timing.

One pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which costs a task per request).

TLS (policy §8): outside dev mode, a request carrying credentials over plain HTTP is refused
with `tls_required`, unless it comes from loopback or from a configured trusted proxy that
says (X-Forwarded-Proto: https) it terminated TLS. A trusted proxy is never exempt as a
loopback client: a proxy on the same host forwarding plain HTTP is refused too. HSTS is sent
on every HTTPS response.

Request ids: each request gets one — the client's `X-Request-Id` when it is a plain token
(letters, digits, `._:-`, at most 128), else a new `req_<hex>` — returned in `X-Request-Id`
and bound to the logging context, so every log line written while serving the request
carries `request_id`.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amnex.api.problems import problem_body
from amnex.config import Settings
from amnex.metrics import API_REQUEST_DURATION

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# New ids: a random prefix per process and a counter — unique across processes without a
# system call per request (`secrets` reads the kernel's random source every time).
_REQUEST_ID_PREFIX = secrets.token_hex(5)
_request_numbers = itertools.count()


def _new_request_id_prefix() -> None:
    """A forked child (a process manager that forks after import) gets its own prefix."""
    global _REQUEST_ID_PREFIX, _request_numbers
    _REQUEST_ID_PREFIX = secrets.token_hex(5)
    _request_numbers = itertools.count()


os.register_at_fork(after_in_child=_new_request_id_prefix)


def request_id_for(header: bytes | None) -> str:
    """The client's request id when it is a plain token, else a new one."""
    if header is not None and _CLIENT_REQUEST_ID.fullmatch(header):
        return header.decode("ascii")
    return f"req_{_REQUEST_ID_PREFIX}{next(_request_numbers) % 16**10:010x}"


def parse_networks(values: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


@dataclass(frozen=True, slots=True)
class _Client:
    trusted_proxy: bool
    loopback: bool


class _ClientClassifier:
    """Whether a peer address is a trusted proxy or loopback, memoised per address string."""

    def __init__(self, trusted: list[Network]) -> None:
        self._trusted = trusted
        self._known: dict[str, _Client] = {}

    def __call__(self, host: str | None) -> _Client:
        if not host:
            return _Client(trusted_proxy=False, loopback=False)
        known = self._known.get(host)
        if known is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                known = _Client(trusted_proxy=False, loopback=False)
            else:
                known = _Client(
                    trusted_proxy=any(address in net for net in self._trusted),
                    loopback=address.is_loopback,
                )
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[host] = known
        return known


def _problem(status: int, code: str, title: str, detail: str) -> bytes:
    body = problem_body(code=code, status=status, title=title, detail=detail, instance=None)
    return json.dumps(body, separators=(",", ":")).encode()


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.dev_mode = settings.dev_mode
        self.max_body_bytes = settings.max_body_bytes
        self.classify = _ClientClassifier(parse_networks(settings.trusted_proxies))
        self.hsts = f"max-age={settings.hsts_max_age_s}; includeSubDomains".encode()
        # Histogram children by (method, route, status class): labels() costs a lock and a
        # tuple build per call, and the set of routes is small and fixed.
        self._timers: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = request_id_for(headers.get(b"x-request-id"))
        request_id_header = (b"x-request-id", request_id.encode("ascii"))
        log_context = structlog.contextvars.bind_contextvars(request_id=request_id)
        client = scope.get("client")
        client_host = client[0] if client else None
        peer = self.classify(client_host)
        if peer.trusted_proxy:
            # A trusted proxy speaks for the client: believe its X-Forwarded-Proto, and do not
            # treat it as a loopback client even when it runs on this host.
            secure = headers.get(b"x-forwarded-proto", b"").lower() == b"https"
            local_client = False
        else:
            secure = scope.get("scheme") == "https"
            local_client = peer.loopback
        status_holder = [500]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                extra = [request_id_header]
                if secure:
                    extra.append((b"strict-transport-security", self.hsts))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            if (
                not secure
                and not self.dev_mode
                and b"authorization" in headers
                and not local_client
            ):
                await self._reject(
                    send_with_headers,
                    403,
                    "tls_required",
                    "Credentials must be sent over HTTPS",
                    "this server accepts credentials only over HTTPS (or from a trusted proxy "
                    "that terminated TLS)",
                )
                return
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    too_large = int(length) > self.max_body_bytes
                except ValueError:
                    await self._reject(
                        send_with_headers,
                        400,
                        "invalid_request",
                        "The request is malformed",
                        "bad Content-Length",
                    )
                    return
                if too_large:
                    await self._reject_too_large(send_with_headers)
                    return
                await self.app(scope, receive, send_with_headers)
            else:
                await self._buffered(scope, receive, send_with_headers)
        finally:
            structlog.contextvars.reset_contextvars(**log_context)
            route = scope.get("route")
            key = (scope["method"], getattr(route, "path", "unmatched"), status_holder[0] // 100)
            timer = self._timers.get(key)
            if timer is None:
                timer = self._timers[key] = API_REQUEST_DURATION.labels(
                    method=key[0], route=key[1], status=f"{key[2]}xx"
                )
            timer.observe(time.perf_counter() - started)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length (chunked): read it within the limit, then replay it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._reject_too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject_too_large(self, send: Send) -> None:
        await self._reject(
            send,
            413,
            "payload_too_large",
            "The request body is too large",
            f"the body exceeds {self.max_body_bytes} bytes",
        )

    @staticmethod
    async def _reject(send: Send, status: int, code: str, title: str, detail: str) -> None:
        body = _problem(status, code, title, detail)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
