"""Webhooks: one delivery attempt over HTTP, to a vetted address, with its outcome classified.

Design note. DNS rebinding is closed by resolving once and connecting only to what was
vetted: `deliver` resolves and vets the host (`ssrf.resolve_and_vet`), then sends through an
httpcore pool whose network backend (`PinnedBackend`) opens TCP connections only to the
addresses pinned for the request in progress (a context variable) and refuses any connection
without a pin. The URL keeps its host name, so the `Host` header, TLS SNI and the certificate
check all use the name, never the address. httpcore is used below httpx on purpose: it
follows no redirects, reads no proxy settings from the environment and keeps no cookies
between receivers. Each address policy gets its own pool, so a connection opened under a
permissive policy is never reused under a stricter one.

Outcomes and what they mean for a retry:

    delivered           2xx                                  done
    http_error          408, 429, 5xx                        retry (Retry-After honoured)
                        other 4xx; 410 also sets `gone`       stop
    redirect_refused    3xx (never followed)                 stop
    timeout             connect, read or overall deadline    retry
    connect_error       refused, unreachable, reset          retry
    tls_error           handshake or certificate failure     retry
    network_error       broken connection, protocol error    retry
    dns_error           the host does not resolve            retry
    unsafe_destination  refused by the SSRF guard (`reason`) stop

At most `MAX_RESPONSE_BYTES` of a response body are read, and then dropped: a receiver's
answer is never stored.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

import httpcore
import httpx

from amnex.clock import utc_now
from amnex.webhooks.ssrf import (
    DESTINATION_UNRESOLVABLE,
    AddressPolicy,
    UnsafeDestination,
    check_url,
    resolve_and_vet,
    url_port,
)

MAX_RESPONSE_BYTES = 4096
RETRY_AFTER_CAP_S = 3600.0
DEFAULT_USER_AGENT = "Amnex-Webhooks/1"
DEFAULT_MAX_CONNECTIONS = 100
KEEPALIVE_EXPIRY_S = 30.0
RETRYABLE_STATUSES = frozenset({408, 429})
MAX_DETAIL_CHARS = 200
# Hop-by-hop and framing headers are the client's business, never the caller's.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
)


class Outcome(StrEnum):
    DELIVERED = "delivered"
    HTTP_ERROR = "http_error"
    REDIRECT_REFUSED = "redirect_refused"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    TLS_ERROR = "tls_error"
    NETWORK_ERROR = "network_error"
    DNS_ERROR = "dns_error"
    UNSAFE_DESTINATION = "unsafe_destination"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt did, for the retry decision and the delivery log."""

    outcome: Outcome
    ok: bool
    retryable: bool
    latency_ms: int
    status_code: int | None = None
    gone: bool = False
    retry_after_s: float | None = None
    # The address the request went to, when a response came back.
    remote_ip: str | None = None
    # The SSRF guard's code for `unsafe_destination` and `dns_error`.
    reason: str | None = None
    # A short explanation for the log; never any of the response body.
    detail: str | None = None


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds from a `Retry-After` header (delay-seconds or HTTP-date), within 0..cap."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # Long digit strings are capped before int() so they cannot cost time or overflow.
        seconds = RETRY_AFTER_CAP_S if len(text) > 10 else float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return max(0.0, min(seconds, RETRY_AFTER_CAP_S))


def classify_status(status: int) -> tuple[Outcome, bool]:
    """The outcome of a response status and whether it is worth retrying."""
    if 200 <= status < 300:
        return Outcome.DELIVERED, False
    if 300 <= status < 400:
        return Outcome.REDIRECT_REFUSED, False
    return Outcome.HTTP_ERROR, status in RETRYABLE_STATUSES or status >= 500


@dataclass(frozen=True, slots=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[str, ...]


_PIN: ContextVar[_Pin | None] = ContextVar("amnex_webhook_pin", default=None)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to the addresses vetted for the request in progress."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.host != host or pin.port != port or not pin.addresses:
            raise httpcore.ConnectError(f"no vetted address for {host}:{port}")
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in pin.addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"cannot connect to {host}:{port}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _request_headers(headers: Mapping[str, str], user_agent: str) -> list[tuple[bytes, bytes]]:
    given = {name.lower() for name in headers}
    defaults = {"User-Agent": user_agent, "Content-Type": "application/json"}
    merged = [(name, value) for name, value in defaults.items() if name.lower() not in given]
    merged += [(name, value) for name, value in headers.items()]
    return [
        (name.encode("ascii"), value.encode("ascii"))
        for name, value in merged
        if name.lower() not in _RESERVED_HEADERS
    ]


def _header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _remote_ip(response: httpcore.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    address = stream.get_extra_info("server_addr")
    return str(address[0]) if address else None


async def _discard_body(response: httpcore.Response) -> None:
    """Read a little of the body, so a short answer leaves the connection reusable."""
    received = 0
    async for chunk in response.aiter_stream():
        received += len(chunk)
        if received >= MAX_RESPONSE_BYTES:
            return


def _ssl_error_behind(exc: BaseException) -> ssl.SSLError | None:
    """The TLS failure under a connect error (httpcore and anyio each wrap it once)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:MAX_DETAIL_CHARS]


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    remote_ip: str | None


class WebhookHttpClient:
    """Sends webhook POSTs; share one per process so connections are pooled."""

    def __init__(
        self,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        http2: bool = False,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._user_agent = user_agent
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._http2 = http2
        self._backend = PinnedBackend(network_backend or httpcore.AnyIOBackend())
        self._pools: dict[AddressPolicy, httpcore.AsyncConnectionPool] = {}

    async def __aenter__(self) -> WebhookHttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()

    def _pool(self, policy: AddressPolicy) -> httpcore.AsyncConnectionPool:
        pool = self._pools.get(policy)
        if pool is None:
            pool = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context,
                max_connections=self._max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
                http1=True,
                http2=self._http2,
                network_backend=self._backend,
            )
            self._pools[policy] = pool
        return pool

    async def deliver(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        policy: AddressPolicy,
        require_https: bool,
        timeout_s: float,
    ) -> AttemptResult:
        """POST `body` to `url` once; every failure comes back as a result, never raised."""
        started = time.perf_counter()

        def failed(outcome: Outcome, detail: str, **fields: Any) -> AttemptResult:
            return AttemptResult(
                outcome=outcome,
                ok=False,
                latency_ms=round((time.perf_counter() - started) * 1000),
                detail=detail,
                **fields,
            )

        try:
            parsed = check_url(url, require_https=require_https)
            async with asyncio.timeout(timeout_s):
                response = await self._post(parsed, body, headers, policy, timeout_s)
        except UnsafeDestination as exc:
            if exc.code == DESTINATION_UNRESOLVABLE:
                return failed(Outcome.DNS_ERROR, exc.detail, retryable=True, reason=exc.code)
            return failed(Outcome.UNSAFE_DESTINATION, exc.detail, retryable=False, reason=exc.code)
        except (TimeoutError, httpcore.TimeoutException):
            return failed(Outcome.TIMEOUT, f"no answer within {timeout_s:g} s", retryable=True)
        except httpcore.ConnectError as exc:
            if (tls_failure := _ssl_error_behind(exc)) is not None:
                return failed(Outcome.TLS_ERROR, _short(tls_failure), retryable=True)
            return failed(Outcome.CONNECT_ERROR, _short(exc), retryable=True)
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            return failed(Outcome.NETWORK_ERROR, _short(exc), retryable=True)

        latency_ms = round((time.perf_counter() - started) * 1000)
        outcome, retryable = classify_status(response.status)
        retry_after_s = (
            parse_retry_after(_header_value(response.headers, b"retry-after"), now=utc_now())
            if retryable
            else None
        )
        return AttemptResult(
            outcome=outcome,
            ok=outcome is Outcome.DELIVERED,
            retryable=retryable,
            latency_ms=latency_ms,
            status_code=response.status,
            gone=response.status == 410,
            retry_after_s=retry_after_s,
            remote_ip=response.remote_ip,
            detail=None if outcome is Outcome.DELIVERED else f"HTTP {response.status}",
        )

    async def _post(
        self,
        url: httpx.URL,
        body: bytes,
        headers: Mapping[str, str],
        policy: AddressPolicy,
        timeout_s: float,
    ) -> _Response:
        host = url.raw_host.decode("ascii")
        port = url_port(url)
        addresses = await resolve_and_vet(host, port, policy)
        target = httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
        token = _PIN.set(_Pin(host, port, tuple(addresses)))
        try:
            async with self._pool(policy).stream(
                "POST",
                target,
                # httpx's netloc brackets an IPv6 host; httpcore's own Host header would not.
                headers=[(b"Host", url.netloc), *_request_headers(headers, self._user_agent)],
                content=body,
                extensions={"timeout": timeouts},
            ) as response:
                await _discard_body(response)
                return _Response(response.status, list(response.headers), _remote_ip(response))
        finally:
            _PIN.reset(token)


async def deliver(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    policy: AddressPolicy,
    require_https: bool,
    timeout_s: float,
) -> AttemptResult:
    """One attempt with a client of its own; a sender should share a `WebhookHttpClient`."""
    async with WebhookHttpClient() as client:
        return await client.deliver(
            url, body, headers, policy=policy, require_https=require_https, timeout_s=timeout_s
        )
