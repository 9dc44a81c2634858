"""Channels: the email channel against the SMTP sink (and a scripted peer) over loopback."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from amnex.channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from amnex.channels.smtp import (
    SmtpChannel,
    classify_smtp_reply,
    compose_email,
    parse_queue_id,
)
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.email.unsubscribe import UnsubscribeClaim, UnsubscribeTokens
from amnex.simulators.smtp_sink import SmtpSink
from support import StartSink, server_tls_context

StartChannel = Callable[..., Awaitable[SmtpChannel]]

_ids = itertools.count(1)


def outbound(to: str = "alice@example.org", **fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "id": f"msg_{next(_ids)}",
        "account_id": "acc_1",
        "channel": "email",
        "from_addr": "Shop <shop@example.com>",
        "to_addr": to,
        "subject": "Your order",
        "body": "It shipped.",
        "html": None,
        "category": "transactional",
        "created_at": utc_now(),
        "attempt": 1,
    }
    values.update(fields)
    return OutboundMessage(**values)


@pytest.fixture
async def start_channel() -> AsyncIterator[StartChannel]:
    channels: list[SmtpChannel] = []

    async def start(port: int, **overrides: Any) -> SmtpChannel:
        options: dict[str, Any] = {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_timeout_s": 5.0,
            "smtp_helo_name": "amnex.test",
        }
        options.update(overrides)
        channel = SmtpChannel(Settings(**options))
        await channel.start()
        channels.append(channel)
        return channel

    yield start
    for channel in channels:
        await channel.close()


@pytest.fixture
async def channel(sink: SmtpSink, start_channel: StartChannel) -> SmtpChannel:
    return await start_channel(sink.port)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class ScriptedPeer:
    """A bare SMTP server that hangs up, unanswered, on a MAIL its script picks.

    `hang_up(done)` sees how many transactions the connection has completed; it stands in
    for a server that dropped an idle session without the client noticing.
    """

    def __init__(self, hang_up: Callable[[int], bool]) -> None:
        self._hang_up = hang_up
        self.connections = 0
        self.delivered = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        done = 0
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"MAIL" and self._hang_up(done):
                    return
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await reader.readuntil(b"\r\n.\r\n")
                    done += 1
                    self.delivered += 1
                    writer.write(b"250 2.0.0 Ok: queued as SCRIPTED\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()


# Delivery and content


async def test_plain_email_is_delivered_and_recorded_by_the_sink(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    message = outbound()

    result = await channel.send(message)

    [stored] = sink.messages()
    assert result.status == "delivered"
    assert result.provider_message_id == stored["id"]
    assert result.detail == {
        "smtp_code": 250,
        "smtp_reply": f"2.0.0 Ok: queued as {stored['id']}",
    }
    assert stored["mail_from"] == "shop@example.com"
    assert stored["rcpt_tos"] == ["alice@example.org"]
    assert stored["from"] == "Shop <shop@example.com>"
    assert stored["to"] == "alice@example.org"
    assert stored["subject"] == "Your order"
    assert stored["message_id"] == f"<{message.id}@example.com>"
    assert stored["x_amnex_message_id"] == message.id
    assert stored["text"] == "It shipped.\n"
    assert stored["html"] is None
    assert stored["dkim_signature"] is False
    raw = sink.raw_message(stored["id"])
    assert raw is not None
    parsed = message_from_bytes(raw, policy=default_policy)
    assert parsed["Date"].datetime.tzinfo is not None
    assert parsed["MIME-Version"] == "1.0"


async def test_text_and_html_go_as_multipart_alternative(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    await channel.send(outbound(body="It shipped.", html="<p>It <b>shipped</b>.</p>"))

    [stored] = sink.messages()
    raw = sink.raw_message(stored["id"])
    assert raw is not None
    assert message_from_bytes(raw, policy=default_policy).get_content_type() == (
        "multipart/alternative"
    )
    assert stored["text"] == "It shipped.\n"
    assert stored["html"] == "<p>It <b>shipped</b>.</p>\n"


async def test_html_only_email(sink: SmtpSink, channel: SmtpChannel) -> None:
    await channel.send(outbound(body=None, html="<p>Hi</p>"))

    [stored] = sink.messages()
    assert (stored["text"], stored["html"]) == (None, "<p>Hi</p>\n")


async def test_non_ascii_names_subject_and_addresses(sink: SmtpSink, channel: SmtpChannel) -> None:
    message = outbound(
        "jürgen@bücher.example",
        from_addr="Bücherstube <läden@bücher.example>",
        subject="Ihre Bestellung ist unterwegs — grüße",
        body="Schöne Grüße",
    )

    await channel.send(message)

    [stored] = sink.messages()
    assert stored["mail_from"] == "läden@bücher.example"
    assert stored["rcpt_tos"] == ["jürgen@bücher.example"]
    assert stored["subject"] == "Ihre Bestellung ist unterwegs — grüße"
    assert stored["text"] == "Schöne Grüße\n"
    assert stored["message_id"] == f"<{message.id}@xn--bcher-kva.example>"


@pytest.mark.parametrize(
    "address",
    ["", "not an address", "a@", "a@b.example, c@d.example", "a@b.example\r\nBcc: x@y.example"],
)
def test_an_address_that_is_not_one_mailbox_fails_permanently(address: str) -> None:
    with pytest.raises(PermanentDeliveryError) as error:
        compose_email(outbound(address), date=utc_now())
    assert error.value.code == "invalid_address"


@pytest.mark.parametrize(
    "fields",
    [{"subject": "Hi\r\nBcc: x@y.example"}, {"body": "lone \ud800 surrogate"}],
)
def test_content_that_cannot_be_email_fails_permanently(fields: dict[str, str]) -> None:
    with pytest.raises(PermanentDeliveryError) as error:
        compose_email(outbound(**fields), date=utc_now())
    assert error.value.code == "invalid_message"


def test_composed_email_keeps_the_message_id_across_attempts() -> None:
    message = outbound(from_addr="billing@shop.example")
    first = compose_email(message, date=utc_now())
    later = compose_email(message, date=utc_now() + dt.timedelta(hours=3))

    assert first.sender == "billing@shop.example"
    assert first.message["Message-ID"] == later.message["Message-ID"]
    assert first.message["Message-ID"] == f"<{message.id}@shop.example>"


# DKIM


def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    """A fresh RSA key in a file, and the TXT record that publishes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_file, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)


async def test_dkim_signature_verifies_against_the_published_key(
    sink: SmtpSink, start_channel: StartChannel, tmp_path: Path
) -> None:
    key_file, txt_record = dkim_key(tmp_path)
    channel = await start_channel(
        sink.port,
        dkim_domain="example.com",
        dkim_selector="mail",
        dkim_private_key_file=key_file,
    )

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return txt_record if name == b"mail._domainkey.example.com." else None

    await channel.send(outbound(html="<p>It shipped.</p>"))

    [stored] = sink.messages()
    raw = sink.raw_message(stored["id"])
    assert raw is not None
    assert stored["dkim_signature"] is True
    assert dkim.verify(raw, dnsfunc=dnsfunc)
    signature = str(message_from_bytes(raw, policy=default_policy)["DKIM-Signature"])
    tags = dict(tag.split("=", 1) for tag in re.sub(r"\s+", "", signature).split(";") if "=" in tag)
    assert (tags["d"], tags["s"], tags["c"]) == ("example.com", "mail", "relaxed/relaxed")
    assert tags["h"].split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
    ]
    tampered = raw.replace(b"Subject: Your order", b"Subject: Your orders")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


async def test_a_dkim_key_that_is_not_a_key_fails_at_start(
    sink: SmtpSink, start_channel: StartChannel, tmp_path: Path
) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA-----\n")

    with pytest.raises(ValueError, match="not a usable RSA key"):
        await start_channel(
            sink.port,
            dkim_domain="example.com",
            dkim_selector="mail",
            dkim_private_key_file=key_file,
        )


# Outcomes scripted by the sink


async def test_recipient_ending_91_fails_permanently_as_unknown_subscriber(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    with pytest.raises(PermanentDeliveryError) as error:
        await channel.send(outbound("bob91@example.org"))

    assert error.value.code == "unknown_subscriber"
    assert error.value.raw_code == "550"
    assert error.value.detail["smtp_stage"] == "RCPT TO"
    assert "User unknown" in error.value.message
    assert sink.messages() == []


async def test_recipient_ending_92_fails_temporarily_then_is_delivered(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    message = outbound("carol92@example.org")

    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(message)
    assert (error.value.code, error.value.raw_code) == ("temporary_failure", "451")

    result = await channel.send(message)
    assert result.status == "delivered"
    assert sink.count_for(message.id) == 1


async def test_recipient_ending_90_is_accepted_and_left_to_bounce(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    result = await channel.send(outbound("dave90@example.org"))

    assert result.status == "delivered"
    assert [m["bounce"] for m in sink.messages()] == [True]


# TLS and authentication


@pytest.mark.parametrize(
    ("sink_options", "smtp_tls"),
    [({"require_starttls": True}, "starttls"), ({"implicit_tls": True}, "implicit")],
)
async def test_tls_delivery_with_a_self_signed_certificate(
    start_sink: StartSink,
    start_channel: StartChannel,
    tmp_path: Path,
    sink_options: dict[str, bool],
    smtp_tls: str,
) -> None:
    sink = await start_sink(tls_context=server_tls_context(tmp_path), **sink_options)
    channel = await start_channel(sink.port, smtp_tls=smtp_tls, smtp_validate_certs=False)

    result = await channel.send(outbound())

    assert result.status == "delivered"
    assert len(sink.messages()) == 1


@pytest.mark.parametrize(
    ("sink_options", "smtp_tls"),
    [({"require_starttls": True}, "starttls"), ({"implicit_tls": True}, "implicit")],
)
async def test_an_untrusted_certificate_is_a_temporary_tls_error(
    start_sink: StartSink,
    start_channel: StartChannel,
    tmp_path: Path,
    sink_options: dict[str, bool],
    smtp_tls: str,
) -> None:
    sink = await start_sink(tls_context=server_tls_context(tmp_path), **sink_options)
    channel = await start_channel(sink.port, smtp_tls=smtp_tls, smtp_validate_certs=True)

    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(outbound())

    assert error.value.code == "tls_error"
    assert "CERTIFICATE_VERIFY_FAILED" in error.value.message
    assert sink.messages() == []


async def test_starttls_against_a_server_without_it_is_a_tls_error(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await start_channel(sink.port, smtp_tls="starttls", smtp_validate_certs=False)

    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(outbound())

    assert error.value.code == "tls_error"


async def test_auth_with_the_configured_credentials(
    start_sink: StartSink, start_channel: StartChannel, tmp_path: Path
) -> None:
    sink = await start_sink(
        tls_context=server_tls_context(tmp_path),
        require_starttls=True,
        auth={"amnex": "s3cret"},
    )
    channel = await start_channel(
        sink.port,
        smtp_tls="starttls",
        smtp_validate_certs=False,
        smtp_username="amnex",
        smtp_password=SecretStr("s3cret"),
    )

    result = await channel.send(outbound())

    assert result.status == "delivered"
    assert len(sink.messages()) == 1


async def test_wrong_credentials_are_a_temporary_auth_failure(
    start_sink: StartSink, start_channel: StartChannel
) -> None:
    sink = await start_sink(auth={"amnex": "s3cret"})
    channel = await start_channel(
        sink.port, smtp_username="amnex", smtp_password=SecretStr("wrong")
    )

    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(outbound())

    assert (error.value.code, error.value.raw_code) == ("auth_failed", "535")


async def test_missing_credentials_are_a_temporary_auth_failure(
    start_sink: StartSink, start_channel: StartChannel
) -> None:
    sink = await start_sink(auth={"amnex": "s3cret"})
    channel = await start_channel(sink.port)

    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(outbound())

    assert (error.value.code, error.value.raw_code) == ("auth_failed", "530")


# Connections and the pool


async def test_connection_refused_is_a_temporary_connection_error(
    start_channel: StartChannel,
) -> None:
    channel = await start_channel(free_port())

    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(outbound())

    assert error.value.code == "connection_error"


async def test_sequential_sends_reuse_one_connection(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await start_channel(sink.port, smtp_pool_size=2)

    for _ in range(5):
        await channel.send(outbound())

    assert len(sink.messages()) == 5
    assert sink.connection_count == 1


async def test_concurrent_sends_share_at_most_pool_size_connections(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await start_channel(sink.port, smtp_pool_size=3)
    messages = [outbound(f"user{n}@example.org") for n in range(12)]

    results = await asyncio.gather(*(channel.send(m) for m in messages))

    assert {r.status for r in results} == {"delivered"}
    assert [sink.count_for(m.id) for m in messages] == [1] * 12
    assert 1 <= sink.connection_count <= 3


async def test_a_refused_recipient_leaves_the_connection_reusable(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    with pytest.raises(PermanentDeliveryError):
        await channel.send(outbound("bob91@example.org"))

    await channel.send(outbound())

    assert sink.connection_count == 1


async def test_a_connection_lost_during_data_is_discarded_and_the_outcome_unknown(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    # Given a recipient whose DATA the sink never answers, and a short timeout
    channel = await start_channel(sink.port, smtp_timeout_s=0.5)
    sink.hold("erin@example.org")
    held = outbound("erin@example.org")

    # When the send times out waiting for the final reply
    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(held)

    # Then the error says the outcome is unknown, and the sink dropped the message
    assert error.value.code == "connection_error"
    assert error.value.detail["outcome_unknown"] is True
    async with asyncio.timeout(5):
        await sink.wait_until_no_connections()
    sink.release("erin@example.org")
    assert sink.count_for(held.id) == 0

    # And the next send opens a new connection instead of reusing the broken one
    await channel.send(outbound())
    assert sink.connection_count == 2


async def test_a_pooled_connection_dropped_by_the_server_is_replaced_transparently(
    start_channel: StartChannel,
) -> None:
    async with ScriptedPeer(hang_up=lambda done: done > 0) as peer:
        channel = await start_channel(peer.port)

        first = await channel.send(outbound())
        second = await channel.send(outbound())

        assert (first.provider_message_id, second.provider_message_id) == ("SCRIPTED",) * 2
        assert (peer.connections, peer.delivered) == (2, 2)


async def test_a_fresh_connection_dropped_at_mail_is_reported_not_retried(
    start_channel: StartChannel,
) -> None:
    async with ScriptedPeer(hang_up=lambda done: True) as peer:
        channel = await start_channel(peer.port)

        with pytest.raises(TemporaryDeliveryError) as error:
            await channel.send(outbound())

        assert error.value.code == "connection_error"
        assert error.value.detail["outcome_unknown"] is False
        assert peer.connections == 1


async def test_close_quits_pooled_connections_and_refuses_later_sends(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    await channel.send(outbound())
    assert sink.open_connections == 1

    await channel.close()

    async with asyncio.timeout(5):
        await sink.wait_until_no_connections()
    with pytest.raises(TemporaryDeliveryError, match="closed"):
        await channel.send(outbound())


async def test_send_before_start_is_refused_temporarily(sink: SmtpSink) -> None:
    channel = SmtpChannel(Settings(smtp_host="127.0.0.1", smtp_port=sink.port))

    with pytest.raises(TemporaryDeliveryError, match="not started"):
        await channel.send(outbound())


async def test_start_needs_an_smtp_host() -> None:
    with pytest.raises(ValueError, match="smtp_host"):
        await SmtpChannel(Settings()).start()


# Pure parts


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "2.0.0 Ok: queued as ABC", ("accepted", False)),
        (
            550,
            "5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
            ("unknown_subscriber", False),
        ),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; not found", ("unknown_subscriber", False)),
        (551, "5.1.6 mailbox has moved", ("unknown_subscriber", False)),
        (550, "#5.1.1 smtp;550 mailbox unavailable", ("unknown_subscriber", False)),
        (552, "5.2.2 mailbox full", ("mailbox_full", False)),
        (550, "5.7.1 Message rejected as spam", ("spam_filtered", False)),
        (554, "5.7.1 Rejected by policy", ("spam_filtered", False)),
        (550, "5.7.1 <x@example.org>: Relay access denied", ("blocked_by_carrier", False)),
        (554, "5.7.26 DMARC validation failed", ("blocked_by_carrier", False)),
        (554, "5.6.0 Message content invalid", ("carrier_rejected", False)),
        (553, "5.1.3 bad address syntax", ("carrier_rejected", False)),
        (550, "No such user here", ("unknown_subscriber", False)),
        (
            552,
            "Requested mail action aborted: exceeded storage allocation",
            ("mailbox_full", False),
        ),
        (554, "Message looks like spam", ("spam_filtered", False)),
        (554, "Transaction failed", ("carrier_rejected", False)),
        (530, "5.7.0 Authentication required", ("auth_failed", True)),
        (451, "4.3.0 Try again later", ("temporary_failure", True)),
        (452, "4.2.2 Mailbox full", ("mailbox_full", True)),
        (450, "4.2.1 Mailbox busy", ("mailbox_busy", True)),
        (421, "4.7.0 Too many connections, slow down", ("throttled", True)),
        (450, "4.7.1 Greylisted, please retry", ("temporary_failure", True)),
        (421, "Service not available", ("temporary_failure", True)),
        (354, "go ahead", ("protocol_error", True)),
        (-1, "Malformed SMTP response line", ("protocol_error", True)),
    ],
)
def test_classify_smtp_reply(code: int, text: str, expected: tuple[str, bool]) -> None:
    assert classify_smtp_reply(code, text) == expected


@pytest.mark.parametrize(
    ("reply", "queue_id"),
    [
        ("2.0.0 Ok: queued as 4XyZ12AbC", "4XyZ12AbC"),
        ("OK queued as <20240101.abc@mx>", "<20240101.abc@mx>"),
        ("OK id=1rAbcD-000Xyz-3e", "1rAbcD-000Xyz-3e"),
        ("2.0.0 OK 1700000000 d1-20020a gsmtp", None),
    ],
)
def test_parse_queue_id(reply: str, queue_id: str | None) -> None:
    assert parse_queue_id(reply) == queue_id


# One-click unsubscribe (RFC 8058) on marketing email

PUBLIC_URL = "https://amnex.example.com"
UNSUBSCRIBE_SECRET = SecretStr("unsubscribe-secret-for-tests-0123456789")


async def marketing_channel(
    sink: SmtpSink, start_channel: StartChannel, **overrides: Any
) -> SmtpChannel:
    options: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "unsubscribe_secret": UNSUBSCRIBE_SECRET,
        **overrides,
    }
    return await start_channel(sink.port, **options)


def token_of(url: str) -> str:
    prefix = f"{PUBLIC_URL}/v1/unsubscribe/"
    assert url.startswith(prefix)
    return url.removeprefix(prefix)


async def test_marketing_email_carries_one_click_unsubscribe_headers_for_its_recipient(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await marketing_channel(sink, start_channel)
    message = outbound("Alex@Example.ORG", category="marketing", body="Sale! {{unsubscribe_url}}")

    await channel.send(message)

    [stored] = sink.messages()
    assert stored["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
    header = stored["list_unsubscribe"]
    assert header.startswith("<")
    assert header.endswith(">")
    url = header[1:-1]
    claim = UnsubscribeTokens.from_settings(Settings(unsubscribe_secret=UNSUBSCRIBE_SECRET)).open(
        token_of(url)
    )
    assert claim == UnsubscribeClaim("acc_1", "email", "Alex@example.org", message.id)
    assert stored["text"] == f"Sale! {url}\n"
    raw = sink.raw_message(stored["id"])
    assert raw is not None
    # One unfolded line, as mail clients expect to find the URL.
    assert f"List-Unsubscribe: <{url}>\r\n".encode() in raw


async def test_transactional_email_has_no_unsubscribe_headers_and_keeps_its_text(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await marketing_channel(sink, start_channel)

    await channel.send(outbound(body="Your code: 1234. {{unsubscribe_url}}"))

    [stored] = sink.messages()
    assert stored["list_unsubscribe"] is None
    assert stored["list_unsubscribe_post"] is None
    assert stored["text"] == "Your code: 1234. {{unsubscribe_url}}\n"


async def test_marketing_html_placeholder_is_filled_and_the_text_without_one_gets_a_footer(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await marketing_channel(sink, start_channel)
    message = outbound(
        category="marketing",
        body="Sale today.",
        html='<p>Sale today.</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
    )

    await channel.send(message)

    [stored] = sink.messages()
    url = stored["list_unsubscribe"][1:-1]
    assert stored["html"] == f'<p>Sale today.</p><a href="{url}">Unsubscribe</a>\n'
    assert stored["text"] == (
        f"Sale today.\n\nTo unsubscribe from these emails, open this link: {url}\n"
    )


async def test_marketing_html_without_a_placeholder_gets_a_footer_link(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await marketing_channel(sink, start_channel)

    await channel.send(
        outbound(category="marketing", body=None, html="<html><body>Sale</body></html>")
    )

    [stored] = sink.messages()
    url = stored["list_unsubscribe"][1:-1]
    assert stored["text"] is None
    assert f'<a href="{url}">unsubscribe from these emails</a>' in stored["html"]
    assert stored["html"].endswith("</body></html>\n")


def test_every_attempt_at_a_marketing_email_carries_the_same_link() -> None:
    message = outbound(category="marketing")
    url = f"{PUBLIC_URL}/v1/unsubscribe/1.{message.id}.x"
    first = compose_email(message, date=utc_now(), unsubscribe_url=url)
    later = compose_email(message, date=utc_now(), unsubscribe_url=url)

    assert first.message["List-Unsubscribe"] == later.message["List-Unsubscribe"] == f"<{url}>"


async def test_marketing_email_waits_while_public_url_is_missing(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    channel = await start_channel(sink.port)

    with pytest.raises(TemporaryDeliveryError) as error:
        await channel.send(outbound(category="marketing"))
    await channel.send(outbound())

    assert error.value.code == "internal_error"
    assert "public_url" in error.value.message
    assert len(sink.messages()) == 1


async def test_a_public_url_that_cannot_prefix_links_fails_at_start(
    sink: SmtpSink, start_channel: StartChannel
) -> None:
    with pytest.raises(ValueError, match="public_url"):
        await start_channel(sink.port, public_url="amnex.example.com")


async def test_dkim_signature_of_marketing_email_covers_the_unsubscribe_headers(
    sink: SmtpSink, start_channel: StartChannel, tmp_path: Path
) -> None:
    key_file, txt_record = dkim_key(tmp_path)
    channel = await marketing_channel(
        sink,
        start_channel,
        dkim_domain="example.com",
        dkim_selector="mail",
        dkim_private_key_file=key_file,
    )

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return txt_record if name == b"mail._domainkey.example.com." else None

    await channel.send(outbound(category="marketing", body="Sale! {{unsubscribe_url}}"))

    [stored] = sink.messages()
    raw = sink.raw_message(stored["id"])
    assert raw is not None
    assert dkim.verify(raw, dnsfunc=dnsfunc)
    signature = str(message_from_bytes(raw, policy=default_policy)["DKIM-Signature"])
    signed = re.sub(r"\s+", "", signature).split("h=", 1)[1].split(";", 1)[0].split(":")
    assert signed[-2:] == ["list-unsubscribe", "list-unsubscribe-post"]
    tampered = raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"X: y")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)
