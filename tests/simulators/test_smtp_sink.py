"""Simulators: the SMTP sink, driven over loopback by a plain aiosmtplib client."""

from __future__ import annotations

import asyncio
import datetime as dt
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from amnex.simulators.smtp_sink import SmtpSink, outcome_digits
from support import StartSink, server_tls_context


def make_email(to: str = "alice@example.org", amnex_id: str = "msg_1") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Shop <shop@example.com>"
    message["To"] = to
    message["Subject"] = "Your order"
    message["Message-ID"] = f"<{amnex_id}@example.com>"
    message["X-Amnex-Message-Id"] = amnex_id
    message.set_content("It shipped.")
    message.add_alternative("<p>It shipped.</p>", subtype="html")
    return message


async def connect(sink: SmtpSink, **kwargs: object) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=sink.host,
        port=sink.port,
        local_hostname="client.test",
        start_tls=False,
        timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )
    await client.connect()
    return client


async def test_accepted_mail_is_stored_with_its_headers_and_bodies(sink: SmtpSink) -> None:
    assert sink.port > 0

    client = await connect(sink)
    _, reply = await client.send_message(make_email(), sender="bounces@example.com")
    await client.quit()

    [stored] = sink.messages()
    assert reply == f"2.0.0 Ok: queued as {stored['id']}"
    assert stored["mail_from"] == "bounces@example.com"
    assert stored["rcpt_tos"] == ["alice@example.org"]
    assert stored["from"] == "Shop <shop@example.com>"
    assert stored["to"] == "alice@example.org"
    assert stored["subject"] == "Your order"
    assert stored["message_id"] == "<msg_1@example.com>"
    assert stored["x_amnex_message_id"] == "msg_1"
    assert stored["text"] == "It shipped.\n"
    assert stored["html"] == "<p>It shipped.</p>\n"
    assert stored["dkim_signature"] is False
    assert stored["bounce"] is False
    assert stored["size"] > 0
    assert dt.datetime.fromisoformat(stored["received_at"]).tzinfo is not None
    assert sink.raw_message(stored["id"]) is not None
    assert sink.raw_message("unknown") is None
    assert sink.count_for("msg_1") == 1
    assert sink.connection_count == 1


async def test_recipient_ending_91_is_refused_as_unknown(sink: SmtpSink) -> None:
    client = await connect(sink)

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await client.send_message(make_email("bob91@example.org"))

    [error] = refused.value.recipients
    assert error.code == 550
    assert error.message == "5.1.1 <bob91@example.org>: Recipient address rejected: User unknown"
    assert sink.messages() == []


async def test_recipient_ending_92_is_deferred_once_then_accepted(sink: SmtpSink) -> None:
    client = await connect(sink)

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await client.send_message(make_email("carol92@example.org"))
    assert (refused.value.recipients[0].code, refused.value.recipients[0].message) == (
        451,
        "4.3.0 Try again later",
    )

    await client.send_message(make_email("Carol92@example.org"))
    assert [m["rcpt_tos"] for m in sink.messages()] == [["Carol92@example.org"]]


async def test_recipient_ending_90_is_accepted_and_marked_to_bounce(sink: SmtpSink) -> None:
    client = await connect(sink)

    await client.send_message(make_email("dave90@example.org"))

    assert [m["bounce"] for m in sink.messages()] == [True]


@pytest.mark.parametrize(
    ("address", "digits"),
    [
        ("bob91@example.org", "91"),
        ("bob+1292@example.org", "92"),
        ("9@example.org", None),
        ("bob@example91.org", None),
        ("bob91x@example.org", None),
        ("90", "90"),
    ],
)
def test_outcome_digits_are_the_local_parts_last_two(address: str, digits: str | None) -> None:
    assert outcome_digits(address) == digits


async def test_held_mail_is_answered_and_stored_only_once_released(sink: SmtpSink) -> None:
    # Given a held recipient
    sink.hold("erin@example.org")
    client = await connect(sink)

    # When DATA for it arrives, it is parked unanswered and unstored
    sending = asyncio.create_task(client.send_message(make_email("erin@example.org")))
    async with asyncio.timeout(5):
        await sink.wait_until_held("erin@example.org")
    assert sink.messages() == []
    assert not sending.done()

    # Then release answers it and stores it
    sink.release("erin@example.org")
    _, reply = await sending
    assert reply.startswith("2.0.0 Ok: queued as ")
    assert sink.count_for("msg_1") == 1

    # And later mail to that address is no longer held
    await client.send_message(make_email("erin@example.org", amnex_id="msg_2"))
    assert sink.count_for("msg_2") == 1


async def test_held_mail_is_dropped_when_the_client_disconnects(sink: SmtpSink) -> None:
    sink.hold("frank@example.org")
    client = await connect(sink)
    sending = asyncio.create_task(client.send_message(make_email("frank@example.org")))
    async with asyncio.timeout(5):
        await sink.wait_until_held("frank@example.org")

    client.close()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await sending
    async with asyncio.timeout(5):
        await sink.wait_until_no_connections()
    sink.release("frank@example.org")

    assert sink.messages() == []
    assert sink.count_for("msg_1") == 0


async def test_wait_until_held_needs_a_hold(sink: SmtpSink) -> None:
    with pytest.raises(RuntimeError, match="not held"):
        await sink.wait_until_held("nobody@example.org")


async def test_stop_closes_open_connections(start_sink: StartSink) -> None:
    sink = await start_sink()
    sink.hold("gina@example.org")
    client = await connect(sink)
    sending = asyncio.create_task(client.send_message(make_email("gina@example.org")))
    async with asyncio.timeout(5):
        await sink.wait_until_held("gina@example.org")

    await sink.stop()

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await sending
    assert sink.messages() == []


async def test_counts_every_copy_of_the_same_amnex_message(sink: SmtpSink) -> None:
    client = await connect(sink)

    await client.send_message(make_email(amnex_id="msg_dup"))
    await client.send_message(make_email(amnex_id="msg_dup"))

    assert sink.count_for("msg_dup") == 2
    assert sink.count_for("msg_other") == 0


async def test_keeps_only_the_most_recent_max_stored(start_sink: StartSink) -> None:
    sink = await start_sink(max_stored=2)
    client = await connect(sink)

    for n in range(3):
        await client.send_message(make_email(amnex_id=f"msg_{n}"))

    assert [m["x_amnex_message_id"] for m in sink.messages()] == ["msg_1", "msg_2"]
    assert [sink.count_for(f"msg_{n}") for n in range(3)] == [0, 1, 1]


async def test_clear_forgets_messages_counts_and_deferrals(sink: SmtpSink) -> None:
    client = await connect(sink)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await client.send_message(make_email("hank92@example.org"))
    await client.send_message(make_email("hank92@example.org"))

    sink.clear()

    assert sink.messages() == []
    assert sink.count_for("msg_1") == 0
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await client.send_message(make_email("hank92@example.org"))
    assert sink.connection_count == 1


async def test_auth_is_required_when_configured(start_sink: StartSink) -> None:
    sink = await start_sink(auth={"amnex": "s3cret"})

    anonymous = await connect(sink)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await anonymous.send_message(make_email())
    assert refused.value.code == 530

    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await connect(sink, username="amnex", password="wrong")

    client = await connect(sink, username="amnex", password="s3cret")
    await client.send_message(make_email())
    assert sink.count_for("msg_1") == 1


async def test_starttls_can_be_required(start_sink: StartSink, tmp_path: Path) -> None:
    sink = await start_sink(tls_context=server_tls_context(tmp_path), require_starttls=True)

    plain = await connect(sink)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await plain.send_message(make_email())
    assert refused.value.code == 530

    client = await connect(sink, validate_certs=False)
    await client.starttls()
    await client.send_message(make_email())
    assert sink.count_for("msg_1") == 1


async def test_implicit_tls_with_auth(start_sink: StartSink, tmp_path: Path) -> None:
    sink = await start_sink(
        tls_context=server_tls_context(tmp_path), implicit_tls=True, auth={"amnex": "s3cret"}
    )

    client = await connect(
        sink, use_tls=True, validate_certs=False, username="amnex", password="s3cret"
    )
    await client.send_message(make_email())

    assert sink.count_for("msg_1") == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"implicit_tls": True}, {"require_starttls": True}],
)
def test_tls_options_need_a_context(kwargs: dict[str, bool]) -> None:
    with pytest.raises(ValueError, match="tls_context"):
        SmtpSink(**kwargs)  # type: ignore[arg-type]
