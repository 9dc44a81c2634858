"""One webhook attempt against real receivers on loopback: every answer is classified, and the
connection only ever goes to the address that was vetted."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from amnex.webhooks.client import (
    MAX_RESPONSE_BYTES,
    RETRY_AFTER_CAP_S,
    AttemptResult,
    Outcome,
    PinnedBackend,
    WebhookHttpClient,
    classify_status,
    deliver,
    parse_retry_after,
)
from amnex.webhooks.signing import new_secret, sign
from amnex.webhooks.ssrf import AddressPolicy
from receivers import Receiver

DEV = AddressPolicy(allow_loopback=True)
STRICT = AddressPolicy()
BODY = b'{"type":"message.delivered","timestamp":"2026-11-28T12:00:00Z","data":{"id":"msg_1"}}'
TIMEOUT_S = 2.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[WebhookHttpClient]:
    async with WebhookHttpClient() as shared:
        yield shared


class FakeDns:
    """Answers for named hosts, one answer per question, then "no such name"; asks for IP
    literals (as the connecting code does) go to the real resolver."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.answers: dict[str, list[list[str]]] = {}
        self.asked: list[str] = []

    def resolve(self, host: str, *answers: list[str]) -> None:
        self.answers[host] = list(answers)

    async def __call__(self, host: str, port: Any, **kwargs: Any) -> list[Any]:
        if host not in self.answers:
            return list(await self.real(host, port, **kwargs))
        self.asked.append(host)
        if not self.answers[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
            for address in self.answers[host].pop(0)
        ]


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    loop = asyncio.get_running_loop()
    fake = FakeDns(loop.getaddrinfo)
    monkeypatch.setattr(loop, "getaddrinfo", fake)
    return fake


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """The real network, remembering where each TCP connection went."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connected_to: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected_to.append(host)
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[WebhookHttpClient, RecordingBackend]]:
    backend = RecordingBackend()
    async with WebhookHttpClient(network_backend=backend) as recording:
        yield recording, backend


async def post(
    client: WebhookHttpClient,
    url: str,
    *,
    policy: AddressPolicy = DEV,
    headers: dict[str, str] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> AttemptResult:
    return await client.deliver(
        url, BODY, headers or {}, policy=policy, require_https=False, timeout_s=timeout_s
    )


async def test_a_2xx_is_delivered_with_the_signed_headers_and_body(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    signed = sign("evt_1", int(time.time()), BODY, [new_secret()])

    result = await post(client, receiver.url("/ok?v=1"), headers=signed)

    assert result.ok
    assert (result.outcome, result.status_code, result.retryable) == (Outcome.DELIVERED, 200, False)
    assert result.remote_ip == "127.0.0.1"
    assert result.latency_ms >= 0
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/ok?v=1", BODY)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("Amnex-Webhooks/")
    for name, value in signed.items():
        assert request.headers[name] == value


@pytest.mark.parametrize(
    ("status", "retryable", "gone"),
    [
        (500, True, False),
        (503, True, False),
        (408, True, False),
        (400, False, False),
        (401, False, False),
        (404, False, False),
        (410, False, True),
    ],
)
async def test_error_statuses_are_classified_for_retry(
    receiver: Receiver, client: WebhookHttpClient, status: int, retryable: bool, gone: bool
) -> None:
    result = await post(client, receiver.url(f"/status/{status}"))

    assert not result.ok
    assert (result.outcome, result.status_code) == (Outcome.HTTP_ERROR, status)
    assert (result.retryable, result.gone) == (retryable, gone)
    assert result.detail == f"HTTP {status}"


async def test_a_redirect_is_refused_and_never_followed(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    result = await post(client, receiver.url("/redirect"))

    assert (result.outcome, result.status_code) == (Outcome.REDIRECT_REFUSED, 302)
    assert not result.retryable
    assert receiver.paths() == ["/redirect"]


async def test_a_receiver_that_hangs_times_out_within_the_deadline(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    started = time.monotonic()

    result = await post(client, receiver.url("/hang"), timeout_s=0.3)

    assert (result.outcome, result.retryable, result.status_code) == (Outcome.TIMEOUT, True, None)
    assert time.monotonic() - started < 2.0


async def test_retry_after_in_seconds_is_reported(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    result = await post(client, receiver.url("/busy"))

    assert (result.status_code, result.retryable, result.retry_after_s) == (429, True, 7.0)


async def test_retry_after_as_an_http_date_is_reported_in_seconds(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    result = await post(client, receiver.url("/unavailable"))

    assert result.status_code == 503
    assert result.retry_after_s is not None
    assert 100.0 <= result.retry_after_s <= 121.0


async def test_a_large_response_body_is_not_read_to_the_end(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    result = await post(client, receiver.url("/big"))
    again = await post(client, receiver.url("/ok"))

    assert result.ok
    assert again.ok
    # Reading stopped after MAX_RESPONSE_BYTES, so that connection could not be reused.
    assert MAX_RESPONSE_BYTES < 1024 * 1024
    assert receiver.connections == 2


async def test_a_closed_port_is_a_retryable_connect_error(client: WebhookHttpClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = await post(client, f"http://127.0.0.1:{port}/ok")

    assert (result.outcome, result.retryable) == (Outcome.CONNECT_ERROR, True)


async def test_connections_are_reused_across_deliveries(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    for _ in range(3):
        assert (await post(client, receiver.url("/ok"))).ok

    assert receiver.connections == 1


async def test_a_connection_opened_under_one_policy_is_not_reused_under_another(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    await post(client, receiver.url("/ok"), policy=DEV)
    await post(
        client, receiver.url("/ok"), policy=AddressPolicy(allow_loopback=True, allow_private=True)
    )

    assert receiver.connections == 2


async def test_the_caller_cannot_override_host_or_framing_headers(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    sneaky = {"Host": "internal.example", "Content-Length": "1", "Transfer-Encoding": "chunked"}

    result = await post(client, receiver.url("/ok"), headers=sneaky)

    assert result.ok
    [request] = receiver.requests
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.body == BODY
    assert "transfer-encoding" not in request.headers


async def test_a_host_resolving_to_a_private_address_is_refused_before_any_connection(
    dns: FakeDns, recorder: tuple[WebhookHttpClient, RecordingBackend]
) -> None:
    client, backend = recorder
    dns.resolve("internal.example", ["10.0.0.1"])

    result = await post(client, "http://internal.example/hook", policy=DEV)

    assert (result.outcome, result.reason) == (Outcome.UNSAFE_DESTINATION, "destination_private")
    assert not result.retryable
    assert "10.0.0.1" in (result.detail or "")
    assert backend.connected_to == []


async def test_a_host_resolving_to_loopback_is_refused_when_loopback_is_not_allowed(
    dns: FakeDns, receiver: Receiver, client: WebhookHttpClient
) -> None:
    dns.resolve("hook.test", ["127.0.0.1"])

    named = await post(client, receiver.url("/ok", host="hook.test"), policy=STRICT)
    literal = await post(client, receiver.url("/ok"), policy=STRICT)

    assert named.reason == literal.reason == "destination_loopback"
    assert receiver.connections == 0


async def test_the_connection_goes_to_the_vetted_address_even_if_dns_changes_its_answer(
    dns: FakeDns, receiver: Receiver, recorder: tuple[WebhookHttpClient, RecordingBackend]
) -> None:
    """Given a name that resolves once and then no longer (as a rebinding attacker would
    change it), when a webhook is sent, then the request reaches the address vetted from the
    first answer, by address, still naming the host."""
    client, backend = recorder
    dns.resolve("hook.test", ["127.0.0.1"])

    result = await post(client, receiver.url("/ok", host="hook.test"))

    assert result.ok, result
    assert dns.asked == ["hook.test"]
    assert backend.connected_to == ["127.0.0.1"]
    assert receiver.requests[0].headers["host"] == f"hook.test:{receiver.port}"


async def test_the_pinned_backend_refuses_a_connection_nobody_vetted(receiver: Receiver) -> None:
    backend = PinnedBackend(httpcore.AnyIOBackend())

    with pytest.raises(httpcore.ConnectError, match="no vetted address"):
        await backend.connect_tcp("127.0.0.1", receiver.port)
    assert receiver.connections == 0


async def test_an_unresolvable_host_is_a_retryable_dns_error(
    dns: FakeDns, client: WebhookHttpClient
) -> None:
    dns.resolve("gone.example")

    result = await post(client, "http://gone.example/hook")

    assert (result.outcome, result.reason, result.retryable) == (
        Outcome.DNS_ERROR,
        "destination_unresolvable",
        True,
    )


async def test_plain_http_is_refused_when_https_is_required(
    receiver: Receiver, client: WebhookHttpClient
) -> None:
    result = await client.deliver(
        receiver.url("/ok"), BODY, {}, policy=DEV, require_https=True, timeout_s=TIMEOUT_S
    )

    assert (result.outcome, result.reason) == (Outcome.UNSAFE_DESTINATION, "url_not_https")
    assert receiver.connections == 0


async def test_the_one_shot_deliver_sends_and_cleans_up(receiver: Receiver) -> None:
    result = await deliver(
        receiver.url("/ok"), BODY, {}, policy=DEV, require_https=False, timeout_s=TIMEOUT_S
    )

    assert result.ok


def write_certificates(directory: Path, host: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A test CA and a certificate for `host` only: (server context, client context)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Amnex webhook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "leaf.pem", directory / "leaf.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


@pytest.fixture
async def tls(
    tmp_path: Path, dns: FakeDns
) -> AsyncIterator[tuple[Receiver, WebhookHttpClient, RecordingBackend]]:
    server_context, client_context = write_certificates(tmp_path, "hook.test")
    server = Receiver(ssl_context=server_context)
    await server.start()
    backend = RecordingBackend()
    async with WebhookHttpClient(ssl_context=client_context, network_backend=backend) as client:
        yield server, client, backend
    await server.close()


async def test_https_to_a_pinned_address_checks_the_certificate_against_the_host_name(
    tls: tuple[Receiver, WebhookHttpClient, RecordingBackend], dns: FakeDns
) -> None:
    server, client, backend = tls
    dns.resolve("hook.test", ["127.0.0.1"])

    result = await client.deliver(
        server.url("/ok", host="hook.test"),
        BODY,
        {},
        policy=DEV,
        require_https=True,
        timeout_s=TIMEOUT_S,
    )

    assert result.ok, result
    assert backend.connected_to == ["127.0.0.1"]
    assert server.requests[0].headers["host"] == f"hook.test:{server.port}"


async def test_a_certificate_for_another_name_is_a_tls_error(
    tls: tuple[Receiver, WebhookHttpClient, RecordingBackend], dns: FakeDns
) -> None:
    server, client, _backend = tls
    dns.resolve("other.test", ["127.0.0.1"])

    result = await client.deliver(
        server.url("/ok", host="other.test"),
        BODY,
        {},
        policy=DEV,
        require_https=True,
        timeout_s=TIMEOUT_S,
    )

    assert (result.outcome, result.retryable) == (Outcome.TLS_ERROR, True)
    assert server.requests == []


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("7", 7.0),
        (" 0 ", 0.0),
        ("86400", RETRY_AFTER_CAP_S),
        ("9" * 50, RETRY_AFTER_CAP_S),
        ("Sat, 28 Nov 2026 12:02:00 GMT", 120.0),
        ("Sat, 28 Nov 2026 11:00:00 GMT", 0.0),
        ("Mon, 30 Nov 2026 12:00:00 GMT", RETRY_AFTER_CAP_S),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_is_read_in_seconds_or_as_a_date_and_capped(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, (Outcome.DELIVERED, False)),
        (204, (Outcome.DELIVERED, False)),
        (301, (Outcome.REDIRECT_REFUSED, False)),
        (307, (Outcome.REDIRECT_REFUSED, False)),
        (408, (Outcome.HTTP_ERROR, True)),
        (429, (Outcome.HTTP_ERROR, True)),
        (500, (Outcome.HTTP_ERROR, True)),
        (599, (Outcome.HTTP_ERROR, True)),
        (400, (Outcome.HTTP_ERROR, False)),
        (410, (Outcome.HTTP_ERROR, False)),
        (422, (Outcome.HTTP_ERROR, False)),
    ],
)
def test_statuses_map_to_outcomes(status: int, expected: tuple[Outcome, bool]) -> None:
    assert classify_status(status) == expected
