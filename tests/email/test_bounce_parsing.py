"""Email: reading DSN (RFC 3464) and ARF (RFC 5965) reports, and what they mean for a message."""

from __future__ import annotations

import base64

import pytest

from amnex.channels.smtp import verp_sender
from amnex.db.ids import looks_like_id
from amnex.email.bounces import (
    DIAGNOSTIC_MAX_LENGTH,
    Report,
    judge,
    message_id_from_verp,
    parse_report,
)
from amnex.simulators.smtp_sink import build_dsn

MSG = "msg_01JABCDEFGHJKMNPQRSTVWXYZ0"
OTHER = "msg_01JZZZZZZZZZZZZZZZZZZZZZZZ"
DOMAIN = "bounces.amnex.example"
TO = "dave@example.org"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# A Postfix bounce, as Postfix writes it (the returned original as message/rfc822).
POSTFIX_UNKNOWN_USER = crlf(f"""\
Return-Path: <>
Date: Tue, 11 Jun 2024 09:12:40 +0000 (UTC)
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces+{MSG}@{DOMAIN}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4F1C2180D.1718097160/mx.example.org"
Message-Id: <20240611091240.6B0B2180E@mx.example.org>

This is a MIME-encapsulated message.

--4F1C2180D.1718097160/mx.example.org
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.org.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{TO}>: host mail.example.org[192.0.2.25] said: 550 5.1.1
    <{TO}>: Recipient address rejected: User unknown in virtual mailbox
    table (in reply to RCPT TO command)

--4F1C2180D.1718097160/mx.example.org
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
X-Postfix-Queue-ID: 4F1C2180D
X-Postfix-Sender: rfc822; bounces+{MSG}@{DOMAIN}
Arrival-Date: Tue, 11 Jun 2024 09:12:39 +0000 (UTC)

Final-Recipient: rfc822; {TO}
Original-Recipient: rfc822;{TO}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.example.org
Diagnostic-Code: smtp; 550 5.1.1 <{TO}>: Recipient address rejected: User
    unknown in virtual mailbox table

--4F1C2180D.1718097160/mx.example.org
Content-Description: Undelivered Message
Content-Type: message/rfc822

Received: from amnex.example (amnex.example [198.51.100.7])
\tby mx.example.org (Postfix) with ESMTP id 4F1C2180D
\tfor <{TO}>; Tue, 11 Jun 2024 09:12:39 +0000 (UTC)
From: Shop <news@shop.example>
To: {TO}
Subject: Your order
Date: Tue, 11 Jun 2024 09:12:38 +0000
Message-ID: <{MSG}@shop.example>
X-Amnex-Message-Id: {MSG}
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"

It shipped.

--4F1C2180D.1718097160/mx.example.org--
""")

# An Exchange-style report: mailbox full, original headers only, folded parameters.
EXCHANGE_MAILBOX_FULL = crlf(f"""\
From: postmaster@outlook.example
To: bounces+{MSG}@{DOMAIN}
Subject: Undeliverable: Your order
MIME-Version: 1.0
Content-Type: multipart/report;
\treport-type="delivery-status";
\tboundary="_000_exchange_boundary_"

--_000_exchange_boundary_
Content-Type: text/plain; charset="us-ascii"

Delivery has failed to these recipients or groups: {TO}
The recipient's mailbox is full and can't accept messages now.

--_000_exchange_boundary_
Content-Type: message/delivery-status

Reporting-MTA: dns;EX01.outlook.example
Received-From-MTA: dns;amnex.example
Arrival-Date: Tue, 11 Jun 2024 09:12:39 +0000

Final-Recipient: rfc822;{TO.upper()}
Action: failed
Status: 5.2.2
Diagnostic-Code: smtp;554 5.2.2 mailbox full;
 STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded

--_000_exchange_boundary_
Content-Type: text/rfc822-headers

From: Shop <news@shop.example>
To: {TO}
Message-ID: <{MSG}@shop.example>
Subject: Your order

--_000_exchange_boundary_--
""")

# An alias expanded at the far end: one report, two recipients, one failed, one delayed.
MULTI_RECIPIENT = crlf(f"""\
From: MAILER-DAEMON@mx.example.org
To: bounces+{MSG}@{DOMAIN}
Subject: Delivery Status Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Some recipients failed.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; dave.home@example.net
Original-Recipient: rfc822; {TO}
Action: failed
Status: 5.1.1 (bad destination mailbox address)
Diagnostic-Code: smtp; 550 5.1.1 No such user

Final-Recipient: rfc822; dave.work@example.com
Original-Recipient: rfc822; team@example.org
Action: delayed
Status: 4.4.1
Diagnostic-Code: smtp; 421 4.4.1 Connection timed out
Will-Retry-Until: Thu, 13 Jun 2024 09:12:39 +0000

--b1--
""")

DELAYED = crlf(f"""\
From: MAILER-DAEMON@mx.example.org
To: bounces+{MSG}@{DOMAIN}
Subject: Delayed Mail (still being retried)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="d"

--d
Content-Type: text/plain

Your message has not been delivered yet. It will be retried.

--d
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; {TO}
Action: delayed
Status: 4.4.7
Diagnostic-Code: X-Postfix; delivery temporarily suspended: connect to
    mail.example.org[192.0.2.25]:25: Connection timed out
Will-Retry-Until: Fri, 14 Jun 2024 09:12:39 +0000

--d--
""")


def dsn(*blocks: str, report_type: str = "delivery-status", encode: bool = False) -> bytes:
    """A minimal DSN with these per-recipient blocks (optionally base64-encoded)."""
    fields = "Reporting-MTA: dns; mx.example.org\n\n" + "\n\n".join(blocks) + "\n"
    if encode:
        body = base64.encodebytes(crlf(fields)).decode()
        status = (
            f"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n{body}"
        )
    else:
        status = f"Content-Type: message/delivery-status\n\n{fields}"
    return crlf(
        "From: MAILER-DAEMON@mx.example.org\n"
        f"To: bounces+{MSG}@{DOMAIN}\n"
        "MIME-Version: 1.0\n"
        f"Content-Type: multipart/report; report-type={report_type}; boundary=x\n\n"
        f"--x\nContent-Type: text/plain\n\nreport\n\n--x\n{status}\n--x--\n"
    )


def block(action: str, status: str, recipient: str = TO, diagnostic: str = "smtp; 550") -> str:
    return (
        f"Final-Recipient: rfc822; {recipient}\nAction: {action}\nStatus: {status}\n"
        f"Diagnostic-Code: {diagnostic}"
    )


# RFC 5965, Appendix B.1 (the abuse report), with an Amnex message as the original.
ARF_ABUSE = crlf(f"""\
From: <abusedesk@example.com>
Date: Thu, 8 Mar 2005 17:40:36 EDT
Subject: FW: Earn money
To: <bounces+{MSG}@{DOMAIN}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information
about this format please see http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <bounces+{MSG}@{DOMAIN}>
Original-Rcpt-To: <{TO}>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Source-IP: 192.0.2.1

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

Received: from mailserver.example.net
        (mailserver.example.net [192.0.2.1])
        by example.com with ESMTP id M63d4137594e46;
        Thu, 08 Mar 2005 14:00:00 -0400
From: <news@shop.example>
To: <{TO}>
Subject: Earn money
MIME-Version: 1.0
Content-type: text/plain
Message-ID: <{MSG}@shop.example>
Date: Thu, 02 Sep 2004 12:31:03 -0500

Spam Spam Spam
--part1_13d.2e68ed54_boundary--
""")


def arf(feedback_type: str, original_message_id: str = MSG) -> bytes:
    return ARF_ABUSE.replace(
        b"Feedback-Type: abuse", f"Feedback-Type: {feedback_type}".encode()
    ).replace(f"<{MSG}@shop.example>".encode(), f"<{original_message_id}@shop.example>".encode())


def test_the_sample_ids_are_message_ids() -> None:
    assert looks_like_id(MSG, "msg")
    assert looks_like_id(OTHER, "msg")


# VERP


def test_the_channels_envelope_sender_reads_back_as_its_message() -> None:
    assert verp_sender(MSG, DOMAIN) == f"bounces+{MSG}@{DOMAIN}"
    assert message_id_from_verp(verp_sender(MSG, DOMAIN), DOMAIN) == MSG


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (f"bounces+{MSG}@{DOMAIN}", MSG),
        (f"BOUNCES+{MSG}@{DOMAIN.upper()}", MSG),
        (f"bounces+{MSG.lower()}@{DOMAIN}", MSG),  # a relay that lowercased the local part
        (f"bounces+{MSG}@{DOMAIN}.", MSG),
        (f"bounces+{MSG}@evil.example", None),
        (f"bounces+{MSG}@sub.{DOMAIN}", None),
        (f"bounces+{MSG}@{DOMAIN}.evil.example", None),
        (f"bounces@{DOMAIN}", None),
        (f"postmaster+{MSG}@{DOMAIN}", None),
        (f"bounces+msg_123@{DOMAIN}", None),
        (f"bounces+acc_{MSG[4:]}@{DOMAIN}", None),
        (f"bounces+{MSG}", None),
        ("", None),
    ],
)
def test_only_a_verp_address_of_the_bounce_domain_names_a_message(
    address: str, expected: str | None
) -> None:
    assert message_id_from_verp(address, DOMAIN) == expected


# DSN


def test_a_postfix_unknown_user_bounce_is_hard_with_unknown_subscriber() -> None:
    report = parse_report(POSTFIX_UNKNOWN_USER)

    assert report.kind == "dsn"
    assert report.original_message_id == MSG
    [recipient] = report.recipients
    assert (recipient.final_recipient, recipient.action, recipient.status) == (
        TO,
        "failed",
        "5.1.1",
    )
    verdict = judge(report, message_id=MSG, address=TO)
    assert (verdict.kind, verdict.status, verdict.error_code) == (
        "hard",
        "5.1.1",
        "unknown_subscriber",
    )
    assert verdict.diagnostic == (
        f"550 5.1.1 <{TO}>: Recipient address rejected: User unknown in virtual mailbox table"
    )


def test_an_exchange_mailbox_full_report_is_hard_with_mailbox_full() -> None:
    report = parse_report(EXCHANGE_MAILBOX_FULL)

    verdict = judge(report, message_id=MSG, address=TO)

    # The recipient is matched whatever its case; the original's headers name the message.
    assert report.original_message_id == MSG
    assert (verdict.kind, verdict.status, verdict.error_code) == ("hard", "5.2.2", "mailbox_full")


def test_in_a_multi_recipient_report_the_block_for_our_recipient_decides() -> None:
    report = parse_report(MULTI_RECIPIENT)

    assert [(r.action, r.status) for r in report.recipients] == [
        ("failed", "5.1.1"),
        ("delayed", "4.4.1"),
    ]
    # Our address was expanded to dave.home, which failed: a hard bounce.
    assert judge(report, message_id=MSG, address=TO).kind == "hard"
    # For the address that was only delayed, nothing permanent happened.
    assert judge(report, message_id=MSG, address="team@example.org").kind == "soft"


def test_when_no_block_names_our_recipient_only_a_failure_of_all_is_hard() -> None:
    all_failed = parse_report(dsn(block("failed", "5.1.1", "x@far.example")))
    partly = parse_report(
        dsn(block("failed", "5.1.1", "x@far.example"), block("delivered", "2.0.0", "y@far.example"))
    )

    assert judge(all_failed, message_id=MSG, address=TO).kind == "hard"
    assert judge(partly, message_id=MSG, address=TO).kind == "soft"


def test_a_delay_notice_is_soft() -> None:
    report = parse_report(DELAYED)

    assert [(r.action, r.status) for r in report.recipients] == [("delayed", "4.4.7")]
    assert judge(report, message_id=MSG, address=TO).kind == "soft"


@pytest.mark.parametrize(
    ("action", "status", "diagnostic", "kind", "error_code"),
    [
        ("failed", "5.1.1", "smtp; 550 5.1.1 user unknown", "hard", "unknown_subscriber"),
        ("failed", "5.1.10", "smtp; 550 5.1.10 null MX", "hard", "unknown_subscriber"),
        ("failed", "5.2.2", "smtp; 552 5.2.2 over quota", "hard", "mailbox_full"),
        ("failed", "5.7.1", "smtp; 550 5.7.1 message rejected as spam", "hard", "spam_filtered"),
        ("failed", "5.7.1", "smtp; 550 5.7.1 relaying denied", "hard", "blocked_by_carrier"),
        ("failed", "5.7.26", "smtp; 550 5.7.26 unauthenticated", "hard", "blocked_by_carrier"),
        ("failed", "5.4.4", "smtp; 550 5.4.4 unable to route", "hard", "carrier_rejected"),
        ("failed", "5.0.0", "smtp; 530 5.0.0 authentication required", "hard", "carrier_rejected"),
        ("Failed", "5.1.1", "smtp; 550", "hard", "unknown_subscriber"),
        # A relay that gave up after retrying: nothing permanent about the address.
        ("failed", "4.4.7", "smtp; 421 timeout", "soft", None),
        ("delayed", "4.2.2", "smtp; 452 4.2.2 mailbox full", "soft", None),
        ("delayed", "5.1.1", "smtp; 550", "soft", None),
        ("delivered", "2.0.0", "smtp; 250 ok", "soft", None),
        ("relayed", "2.0.0", "smtp; 250 ok", "soft", None),
        ("failed", "5.1", "smtp; 550", "soft", None),  # not an RFC 3463 status
        ("failed", "five", "smtp; 550", "soft", None),
    ],
)
def test_what_a_recipient_block_means(
    action: str, status: str, diagnostic: str, kind: str, error_code: str | None
) -> None:
    verdict = judge(
        parse_report(dsn(block(action, status, diagnostic=diagnostic))), message_id=MSG, address=TO
    )

    assert (verdict.kind, verdict.error_code) == (kind, error_code)


def test_a_base64_encoded_status_part_is_read() -> None:
    report = parse_report(dsn(block("failed", "5.1.1"), encode=True))

    assert judge(report, message_id=MSG, address=TO).kind == "hard"


def test_a_quoted_printable_status_part_is_read() -> None:
    raw = dsn(block("failed", "5.1.1", diagnostic="smtp; 550 5.1.1 caf=C3=A9 unknown")).replace(
        b"Content-Type: message/delivery-status\r\n",
        b"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: quoted-printable\r\n",
    )

    verdict = judge(parse_report(raw), message_id=MSG, address=TO)

    assert (verdict.kind, verdict.diagnostic) == ("hard", "550 5.1.1 caf\u00e9 unknown")


def test_a_long_diagnostic_is_cut() -> None:
    report = parse_report(dsn(block("failed", "5.1.1", diagnostic="smtp; 550 5.1.1 " + "x" * 5000)))

    verdict = judge(report, message_id=MSG, address=TO)

    assert verdict.diagnostic is not None
    assert len(verdict.diagnostic) == DIAGNOSTIC_MAX_LENGTH


def test_a_report_whose_original_names_another_message_is_not_trusted() -> None:
    other = POSTFIX_UNKNOWN_USER.replace(
        f"{MSG}@shop.example".encode(), f"{OTHER}@shop.example".encode()
    ).replace(f"X-Amnex-Message-Id: {MSG}".encode(), f"X-Amnex-Message-Id: {OTHER}".encode())

    report = parse_report(other)

    assert report.original_message_id == OTHER
    assert judge(report, message_id=MSG, address=TO).kind == "unmatched"


def test_the_sinks_dsn_reads_as_a_hard_bounce_for_its_message() -> None:
    original = crlf(f"From: news@shop.example\nTo: {TO}\nMessage-ID: <{MSG}@shop.example>\n\nhi\n")

    report = parse_report(build_dsn(f"bounces+{MSG}@{DOMAIN}", [TO], original))

    assert report.kind == "dsn"
    assert report.original_message_id == MSG
    verdict = judge(report, message_id=MSG, address=TO)
    assert (verdict.kind, verdict.status, verdict.error_code) == (
        "hard",
        "5.1.1",
        "unknown_subscriber",
    )


# ARF


def test_an_rfc_5965_abuse_report_is_a_complaint() -> None:
    report = parse_report(ARF_ABUSE)

    assert (report.kind, report.feedback_type, report.original_message_id) == ("arf", "abuse", MSG)
    assert judge(report, message_id=MSG, address=TO).kind == "complaint"


@pytest.mark.parametrize("feedback_type", ["not-spam", "fraud", "auth-failure", "virus", "other"])
def test_other_feedback_types_are_no_complaint(feedback_type: str) -> None:
    report = parse_report(arf(feedback_type))

    assert report.feedback_type == feedback_type
    assert judge(report, message_id=MSG, address=TO).kind == "unmatched"


def test_a_complaint_about_another_message_is_not_trusted() -> None:
    report = parse_report(arf("abuse", original_message_id=OTHER))

    assert judge(report, message_id=MSG, address=TO).kind == "unmatched"


def test_a_complaint_whose_original_carries_no_amnex_id_goes_by_the_verp_address() -> None:
    report = parse_report(
        ARF_ABUSE.replace(f"<{MSG}@shop.example>".encode(), b"<8787KJKJ3K4J@example.net>")
    )

    assert report.original_message_id is None
    assert judge(report, message_id=MSG, address=TO).kind == "complaint"


# Malformed and other mail


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage \r\n\r\n\x80",
        crlf(
            f"From: MAILER-DAEMON@mx.example.org\nTo: bounces+{MSG}@{DOMAIN}\nSubject: failure\n\n"
            f"Your mail to {TO} could not be delivered: 550 5.1.1 user unknown\n"
        ),
        crlf("Subject: Out of office\nAuto-Submitted: auto-replied\n\nI am away until Monday.\n"),
        # A report without its machine-readable part.
        crlf(
            "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
            "boundary=x\n\n--x\nContent-Type: text/plain\n\nfailed\n--x--\n"
        ),
        # Without a report type, or with one this receiver does not read.
        dsn(block("failed", "5.1.1"), report_type="disposition-notification"),
        dsn(block("failed", "5.1.1")).replace(b"report-type=delivery-status; ", b""),
        # Only the per-message block: no recipient at all.
        dsn().replace(b"\r\n\r\n\r\n--x--", b"\r\n--x--"),
        # A feedback report without Feedback-Type.
        ARF_ABUSE.replace(b"Feedback-Type: abuse\r\n", b""),
        # Cut off in the middle of its status part.
        POSTFIX_UNKNOWN_USER[: POSTFIX_UNKNOWN_USER.index(b"Final-Recipient")],
    ],
    ids=[
        "empty",
        "binary",
        "plain-text-bounce",
        "auto-reply",
        "no-status-part",
        "other-report-type",
        "no-report-type",
        "no-recipient-block",
        "no-feedback-type",
        "cut-in-status-part",
    ],
)
def test_mail_that_is_no_readable_report_is_unmatched(raw: bytes) -> None:
    report = parse_report(raw)

    assert report.kind == "other"
    assert judge(report, message_id=MSG, address=TO).kind == "unmatched"


def test_a_report_cut_after_its_status_part_still_counts() -> None:
    cut = POSTFIX_UNKNOWN_USER[
        : POSTFIX_UNKNOWN_USER.index(
            b"--4F1C2180D.1718097160/mx.example.org\r\nContent-Description: Undelivered"
        )
    ]

    report = parse_report(cut)

    assert judge(report, message_id=MSG, address=TO).kind == "hard"


def test_a_report_with_thousands_of_recipients_is_read_in_bounded_time() -> None:
    blocks = [block("delayed", "4.4.1", f"r{i}@example.org") for i in range(5000)]

    report = parse_report(dsn(*blocks))

    assert len(report.recipients) == 100
    assert isinstance(report, Report)
