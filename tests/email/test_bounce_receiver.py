"""Email: the bounce receiver over loopback SMTP, against the suite's database (SQLite or
PostgreSQL), fed by real reports and by the SMTP sink's own bounces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from amnex.channels.base import OutboundMessage
from amnex.channels.smtp import SmtpChannel, verp_sender
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.email.receiver import BounceReceiver
from amnex.messages.models import Message
from amnex.privacy.keys import open_address
from amnex.recipients.models import OptOut, OptOutEvent
from amnex.simulators import smtp_sink
from amnex.simulators.smtp_sink import SmtpSink, build_dsn
from amnex.worker_process import WorkerParts
from support import AccountHandle, StartSink
from support import load_message as get_message
from support import message_events as events

DOMAIN = "bounces.amnex.test"
TO = "dave90@example.org"

StartReceiver = Callable[..., Awaitable[BounceReceiver]]


@pytest.fixture
def bounce_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"bounce_domain": DOMAIN})


@pytest.fixture
async def start_receiver(bounce_settings: Settings, db: Database) -> AsyncIterator[StartReceiver]:
    started: list[BounceReceiver] = []

    async def start(database: Database | None = None, **settings: Any) -> BounceReceiver:
        receiver = BounceReceiver(
            bounce_settings.model_copy(update=settings), database or db, port=0
        )
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(start_receiver: StartReceiver) -> BounceReceiver:
    return await start_receiver()


async def make_email(
    db: Database, account: AccountHandle, *, status: str = "delivered", to: str = TO
) -> str:
    """An outbound email as the worker leaves it (by default: delivered, three events)."""
    now = utc_now() - timedelta(seconds=5)
    message_id = new_id("msg")
    async with db.unit_of_work() as session:
        session.add(
            Message(
                id=message_id,
                account_id=account.account_id,
                channel="email",
                direction="outbound",
                from_addr="news@shop.example",
                to_addr=to,
                category="transactional",
                status=status,
                subject="Your order",
                body="It shipped.",
                created_at=now,
                updated_at=now,
                sent_at=now,
                delivered_at=now if status == "delivered" else None,
                attempts=1,
                event_seq=3,
            )
        )
    return message_id


def original(message_id: str, to: str = TO) -> bytes:
    return (
        f"From: news@shop.example\r\nTo: {to}\r\nMessage-ID: <{message_id}@shop.example>\r\n"
        f"X-Amnex-Message-Id: {message_id}\r\nSubject: Your order\r\n\r\nIt shipped.\r\n"
    ).encode()


def hard_bounce(message_id: str, to: str = TO) -> bytes:
    return build_dsn(verp_sender(message_id, DOMAIN), [to], original(message_id, to))


def report(message_id: str, report_type: str, fields: str) -> bytes:
    """A minimal multipart/report of `report_type` whose machine-readable part is `fields`."""
    part = "delivery-status" if report_type == "delivery-status" else "feedback-report"
    return (
        f"From: reporter@mx.example.org\r\nTo: {verp_sender(message_id, DOMAIN)}\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type={report_type}; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nA report.\r\n"
        f"--b\r\nContent-Type: message/{part}\r\n\r\n{fields}\r\n"
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{message_id}@shop.example>\r\n\r\n--b--\r\n"
    ).encode()


def complaint(message_id: str) -> bytes:
    return report(message_id, "feedback-report", "Feedback-Type: abuse\r\nVersion: 1\r\n")


def delay(message_id: str) -> bytes:
    return report(
        message_id,
        "delivery-status",
        f"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; {TO}\r\n"
        "Action: delayed\r\nStatus: 4.4.7\r\n",
    )


async def deliver(receiver: BounceReceiver, raw: bytes, *recipients: str) -> str:
    """Send `raw` to the receiver from the null sender; the reply to DATA."""
    client = aiosmtplib.SMTP(
        hostname=receiver.host, port=receiver.port, start_tls=False, timeout=10
    )
    async with client:
        replies, reply = await client.sendmail("", list(recipients), raw)
    assert all(code == 250 for code, _ in replies.values())
    return reply


async def opt_outs(db: Database, account: AccountHandle) -> list[OptOut]:
    async with db.read_session() as session:
        rows = await session.scalars(
            select(OptOut).where(OptOut.account_id == account.account_id).order_by(OptOut.id)
        )
        return list(rows)


async def opt_out_event_count(db: Database, account: AccountHandle) -> int:
    async with db.read_session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(OptOutEvent)
            .where(OptOutEvent.account_id == account.account_id)
        )
    return int(count or 0)


def bounces_counted(kind: str) -> float:
    return REGISTRY.get_sample_value("amnex_email_bounces_total", {"kind": kind}) or 0.0


# Hard bounces


async def test_a_hard_bounce_makes_the_message_undelivered_and_suppresses_its_recipient(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    # Given an email the recipient's server accepted (delivered)
    message_id = await make_email(db, account)
    hard_before = bounces_counted("hard")

    # When that server bounces it (RFC 3464, 5.1.1) to the message's VERP address
    reply = await deliver(receiver, hard_bounce(message_id), verp_sender(message_id, DOMAIN))

    # Then the report is acknowledged, the message is undelivered with the bounce's reason
    assert reply.startswith("2.0.0")
    message = await get_message(db, message_id)
    assert message.status == "undelivered"
    assert message.error_code == "unknown_subscriber"
    assert message.provider_error_code == "5.1.1"
    assert message.error_message is not None
    assert message.error_message.startswith("bounced after delivery: 5.1.1 550 5.1.1")
    assert message.failed_at is not None
    assert message.delivered_at is not None  # when the server took it, kept
    # And the transition is an event that says why
    [event] = await events(db, message_id)
    assert (event.seq, event.status, event.error_code) == (4, "undelivered", "unknown_subscriber")
    assert event.detail is not None
    assert event.detail["source"] == "bounce"
    assert event.detail["provider_error_code"] == "5.1.1"
    # And the recipient is on the account's suppression list for email, with the evidence
    [opt_out] = await opt_outs(db, account)
    assert (opt_out.channel, open_address(opt_out.address), opt_out.source) == (
        "email",
        TO,
        "bounce",
    )
    assert opt_out.evidence is not None
    assert opt_out.evidence["message_id"] == message_id
    assert opt_out.evidence["status"] == "5.1.1"
    assert "User unknown" in opt_out.evidence["diagnostic"]
    assert bounces_counted("hard") == hard_before + 1


async def test_the_same_bounce_twice_changes_nothing(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    message_id = await make_email(db, account)
    verp = verp_sender(message_id, DOMAIN)
    await deliver(receiver, hard_bounce(message_id), verp)
    first = await get_message(db, message_id)

    # A sender that never saw our 250 sends the report again
    reply = await deliver(receiver, hard_bounce(message_id), verp)

    assert reply.startswith("2.0.0")
    again = await get_message(db, message_id)
    assert (again.status, again.updated_at, again.failed_at, again.event_seq) == (
        first.status,
        first.updated_at,
        first.failed_at,
        first.event_seq,
    )
    assert len(await events(db, message_id)) == 1
    assert len(await opt_outs(db, account)) == 1
    assert await opt_out_event_count(db, account) == 1


async def test_two_copies_of_a_bounce_at_once_apply_once(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    message_id = await make_email(db, account)
    verp = verp_sender(message_id, DOMAIN)

    replies = await asyncio.gather(
        *(deliver(receiver, hard_bounce(message_id), verp) for _ in range(4))
    )

    assert all(reply.startswith("2.0.0") for reply in replies)
    assert [e.status for e in await events(db, message_id)] == ["undelivered"]
    assert await opt_out_event_count(db, account) == 1


async def test_a_bounce_before_the_send_is_recorded_is_deferred_then_applied(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    # Given a message whose worker has the server's 250 but has not stored `delivered` yet
    message_id = await make_email(db, account, status="sending")
    verp = verp_sender(message_id, DOMAIN)

    # When its bounce overtakes that write, the sender is told to come back later
    with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
        await deliver(receiver, hard_bounce(message_id), verp)
    assert deferred.value.code == 451
    assert (await get_message(db, message_id)).status == "sending"
    assert await opt_outs(db, account) == []

    # And once the outcome is stored, the same report applies
    async with db.unit_of_work() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        message.status = "delivered"
    await deliver(receiver, hard_bounce(message_id), verp)
    assert (await get_message(db, message_id)).status == "undelivered"


async def test_a_bounce_for_a_message_being_retried_suppresses_without_a_status_change(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    # A connection lost during DATA: the server had the mail, the message waits to be retried
    message_id = await make_email(db, account, status="queued")

    await deliver(receiver, hard_bounce(message_id), verp_sender(message_id, DOMAIN))

    assert (await get_message(db, message_id)).status == "queued"
    assert await events(db, message_id) == []
    assert [o.source for o in await opt_outs(db, account)] == ["bounce"]


async def test_one_report_to_two_bounce_addresses_applies_to_both_messages(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    first = await make_email(db, account)
    second = await make_email(db, account, to="erin90@example.org")
    dsn = build_dsn("x@y.example", [TO, "erin90@example.org"], b"Subject: x\r\n\r\n")

    await deliver(receiver, dsn, verp_sender(first, DOMAIN), verp_sender(second, DOMAIN))

    assert (await get_message(db, first)).status == "undelivered"
    assert (await get_message(db, second)).status == "undelivered"
    stored = [open_address(o.address) or "" for o in await opt_outs(db, account)]
    assert sorted(stored) == [TO, "erin90@example.org"]


# Complaints, delays and other mail


async def test_a_complaint_suppresses_the_recipient_and_leaves_the_status(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    message_id = await make_email(db, account)
    before = bounces_counted("complaint")

    await deliver(receiver, complaint(message_id), verp_sender(message_id, DOMAIN))
    await deliver(receiver, complaint(message_id), verp_sender(message_id, DOMAIN))

    assert (await get_message(db, message_id)).status == "delivered"
    assert await events(db, message_id) == []
    [opt_out] = await opt_outs(db, account)
    assert (opt_out.channel, open_address(opt_out.address), opt_out.source) == (
        "email",
        TO,
        "complaint",
    )
    assert opt_out.evidence == {"message_id": message_id, "feedback_type": "abuse"}
    assert await opt_out_event_count(db, account) == 1
    assert bounces_counted("complaint") == before + 2


async def test_a_delay_notice_changes_nothing_and_counts_as_soft(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    message_id = await make_email(db, account)
    before = bounces_counted("soft")

    reply = await deliver(receiver, delay(message_id), verp_sender(message_id, DOMAIN))

    assert reply.startswith("2.0.0")
    assert (await get_message(db, message_id)).status == "delivered"
    assert await opt_outs(db, account) == []
    assert bounces_counted("soft") == before + 1


async def test_a_report_for_no_message_is_accepted_and_counted_unmatched(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    before = bounces_counted("unmatched")
    unknown = new_id("msg")

    reply = await deliver(receiver, hard_bounce(unknown), verp_sender(unknown, DOMAIN))

    assert reply.startswith("2.0.0")
    assert await opt_outs(db, account) == []
    assert bounces_counted("unmatched") == before + 1


async def test_mail_that_is_no_report_is_accepted_and_ignored(
    db: Database, account: AccountHandle, receiver: BounceReceiver
) -> None:
    message_id = await make_email(db, account)
    auto_reply = b"Subject: Out of office\r\n\r\nI am away. 550 5.1.1 user unknown\r\n"

    reply = await deliver(receiver, auto_reply, verp_sender(message_id, DOMAIN))

    assert reply.startswith("2.0.0")
    assert (await get_message(db, message_id)).status == "delivered"
    assert await opt_outs(db, account) == []


@pytest.mark.parametrize(
    "address",
    [
        "postmaster@bounces.amnex.test",
        "bounces@bounces.amnex.test",
        "bounces+msg_01JABCDEFGHJKMNPQRSTVWXYZ0@elsewhere.example",
        "bounces+not-an-id@bounces.amnex.test",
        "dave@example.org",
    ],
)
async def test_mail_for_any_other_address_is_refused(
    receiver: BounceReceiver, address: str
) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await deliver(receiver, b"Subject: x\r\n\r\nx\r\n", address)

    assert refused.value.recipients[0].code == 550


async def test_mail_over_the_size_limit_is_refused(
    db: Database, account: AccountHandle, start_receiver: StartReceiver
) -> None:
    receiver = await start_receiver(bounce_max_message_bytes=10_240)
    message_id = await make_email(db, account)
    big = hard_bounce(message_id) + b"x" * 20_000 + b"\r\n"

    # Refused at MAIL when the client announces its SIZE, else at the end of DATA
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await deliver(receiver, big, verp_sender(message_id, DOMAIN))

    assert refused.value.code == 552
    assert (await get_message(db, message_id)).status == "delivered"


async def test_a_database_that_is_away_answers_451_so_the_sender_retries(
    bounce_settings: Settings, start_receiver: StartReceiver
) -> None:
    away = Database(
        bounce_settings.model_copy(
            update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
        )
    )
    try:
        receiver = await start_receiver(away)
        message_id = new_id("msg")

        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            await deliver(receiver, hard_bounce(message_id), verp_sender(message_id, DOMAIN))
    finally:
        await away.dispose()

    assert deferred.value.code == 451


# The channel's envelope sender, the sink's bounces, the worker's receiver


async def test_the_channel_sends_with_the_verp_envelope_sender(
    sink: SmtpSink, bounce_settings: Settings
) -> None:
    channel = SmtpChannel(bounce_settings.model_copy(update={"smtp_helo_name": "amnex.test"}))
    await channel.start()
    message = OutboundMessage(
        id=new_id("msg"),
        account_id="acc_1",
        channel="email",
        from_addr="Shop <shop@example.com>",
        to_addr="alice@example.org",
        subject="Your order",
        body="It shipped.",
        html=None,
        category="transactional",
        created_at=utc_now(),
        attempt=1,
    )
    try:
        await channel.send(message)
    finally:
        await channel.close()

    [stored] = sink.messages()
    assert stored["mail_from"] == f"bounces+{message.id}@{DOMAIN}"
    assert stored["from"] == "Shop <shop@example.com>"
    assert stored["message_id"] == f"<{message.id}@example.com>"


def sink_email(to: str, message_id: str) -> EmailMessage:
    email = EmailMessage()
    email["From"] = "news@shop.example"
    email["To"] = to
    email["Subject"] = "Your order"
    email["Message-ID"] = f"<{message_id}@shop.example>"
    email["X-Amnex-Message-Id"] = message_id
    email.set_content("It shipped.")
    return email


async def send_to_sink(sink: SmtpSink, email: EmailMessage, sender: str) -> None:
    await aiosmtplib.send(
        email, sender=sender, hostname=sink.host, port=sink.port, start_tls=False, timeout=10
    )


async def test_the_sink_bounces_mail_for_90_through_the_receiver(
    db: Database, account: AccountHandle, receiver: BounceReceiver, start_sink: StartSink
) -> None:
    sink = await start_sink(bounce_relay=(receiver.host, receiver.port))
    message_id = await make_email(db, account)

    await send_to_sink(sink, sink_email(TO, message_id), verp_sender(message_id, DOMAIN))

    async with asyncio.timeout(10):
        bounces = await sink.wait_for_bounces()
    assert bounces[0]["to"] == verp_sender(message_id, DOMAIN)
    assert (bounces[0]["status"], bounces[0]["recipients"]) == ("sent", [TO])
    message = await get_message(db, message_id)
    assert (message.status, message.error_code) == ("undelivered", "unknown_subscriber")


async def test_the_sink_bounces_nothing_else(
    receiver: BounceReceiver, start_sink: StartSink
) -> None:
    sink = await start_sink(bounce_relay=(receiver.host, receiver.port))

    await send_to_sink(sink, sink_email("alice@example.org", new_id("msg")), "x@shop.example")
    # A bounce is never bounced
    await send_to_sink(sink, sink_email("dave90@example.org", new_id("msg")), "")

    assert len(sink.messages()) == 2
    assert sink.bounces() == []


async def test_the_sink_retries_a_bounce_a_bounded_number_of_times(
    start_sink: StartSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_sink, "BOUNCE_FIRST_RETRY_S", 0.001)
    monkeypatch.setattr(smtp_sink, "BOUNCE_MAX_RETRY_S", 0.002)
    with socket_that_refuses() as port:
        sink = await start_sink(bounce_relay=("127.0.0.1", port))

        await send_to_sink(sink, sink_email(TO, new_id("msg")), "x@shop.example")

        async with asyncio.timeout(10):
            [bounce] = await sink.wait_for_bounces()
    assert (bounce["status"], bounce["attempts"]) == ("failed", smtp_sink.BOUNCE_ATTEMPTS)


async def test_the_sink_gives_up_on_a_permanent_refusal_at_once(
    receiver: BounceReceiver, start_sink: StartSink
) -> None:
    sink = await start_sink(bounce_relay=(receiver.host, receiver.port))

    # The receiver refuses an envelope sender that is no bounce address of its domain
    await send_to_sink(sink, sink_email(TO, new_id("msg")), "news@shop.example")

    async with asyncio.timeout(10):
        [bounce] = await sink.wait_for_bounces()
    assert (bounce["status"], bounce["attempts"]) == ("failed", 1)
    assert bounce["reply"].startswith("550")


@pytest.mark.parametrize("host", ["192.0.2.10", "mx.example.org", "::"])
def test_the_sink_sends_bounces_on_loopback_only(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        SmtpSink(bounce_relay=(host, 2525))


async def test_the_worker_runs_the_receiver_when_a_port_is_set(
    bounce_settings: Settings, db: Database, account: AccountHandle
) -> None:
    parts = await WorkerParts.start(
        bounce_settings.model_copy(update={"bounce_listen_port": 0}), db
    )
    try:
        assert parts.bounce_receiver is not None
        assert parts.bounce_receiver.port > 0
        message_id = await make_email(db, account)
        await deliver(
            parts.bounce_receiver, hard_bounce(message_id), verp_sender(message_id, DOMAIN)
        )
        assert (await get_message(db, message_id)).status == "undelivered"
    finally:
        await parts.close()


async def test_a_worker_without_a_port_runs_no_receiver(
    bounce_settings: Settings, db: Database
) -> None:
    parts = await WorkerParts.start(bounce_settings, db)
    try:
        assert parts.bounce_receiver is None
    finally:
        await parts.close()


async def test_a_receiver_without_a_bounce_domain_refuses_to_start(
    settings: Settings, db: Database
) -> None:
    with pytest.raises(ValueError, match="bounce_domain"):
        await WorkerParts.start(settings.model_copy(update={"bounce_listen_port": 0}), db)


class socket_that_refuses:
    """A loopback port nothing listens on (bound, not listening, so no one else takes it)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()
