"""Email: reading bounces and complaints — RFC 3464 DSNs and RFC 5965 ARF reports (pure).

Design note. Amnex sends every email with the envelope sender `bounces+<message id>@<bounce
domain>` (VERP, `channels.smtp.verp_sender`), so a report names its message by the address it
was sent to; the report itself is read only for what happened. The receiver
(`email.receiver`) does the I/O; everything here is pure and table-tested.

- A delivery status notification (`multipart/report; report-type=delivery-status`) carries one
  block of fields per recipient. A block with `Action: failed` and a `Status: 5.x.x` is a hard
  bounce; `delayed`, a 4.x.x status (even with `failed`: a relay that gave up retrying says
  nothing permanent about the address), `delivered`, `relayed` and `expanded` are not.
- Our messages have one recipient each, but a report may list several (an alias or list
  expanded at the far end). Blocks whose Final- or Original-Recipient is the address we sent
  to decide; when none names it (the far end rewrote it), the mail bounced only if every
  block failed permanently.
- A feedback report (`multipart/report; report-type=feedback-report`) with `Feedback-Type:
  abuse` is a complaint. Other feedback types (`not-spam`, `fraud`, `auth-failure`, …) say
  nothing about what the recipient wants.
- The returned original (`message/rfc822`, `text/rfc822-headers` and their RFC 6532
  `global` forms) names its Amnex message by `X-Amnex-Message-Id` or by the Message-ID the
  channel writes (`<message id@domain>`). When it names a different message than the VERP
  address, the report is not trusted for either (`unmatched`).

Anything else — a plain-text bounce, an auto-reply, a report missing its machine-readable
part, a status that is not an RFC 3463 code — is `unmatched`: counted, logged, never applied.
"""

from __future__ import annotations

import base64
import email.policy
import quopri
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser, HeaderParser
from typing import Final, Literal

from amnex.channels.smtp import VERP_LOCAL_PREFIX, classify_smtp_reply
from amnex.db.ids import looks_like_id

__all__ = [
    "DIAGNOSTIC_MAX_LENGTH",
    "BounceKind",
    "RecipientStatus",
    "Report",
    "Verdict",
    "judge",
    "message_id_from_verp",
    "parse_report",
]

BounceKind = Literal["hard", "soft", "complaint", "unmatched"]
ReportKind = Literal["dsn", "arf", "other"]

DIAGNOSTIC_MAX_LENGTH: Final = 300
# Enough for any real report; a hostile one cannot make us keep thousands of blocks.
MAX_RECIPIENT_BLOCKS: Final = 100

_STATUS: Final = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")
_MESSAGE_ID_HEADER: Final = re.compile(r"<?\s*([^@<>\s]+)@[^<>\s]*>?")
_BLANK_LINE: Final = re.compile(r"\r?\n[ \t]*\r?\n")
_DELIVERY_STATUS_TYPES: Final = frozenset(
    {"message/delivery-status", "message/global-delivery-status"}
)
_FEEDBACK_TYPES: Final = frozenset({"message/feedback-report"})
_ORIGINAL_TYPES: Final = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}
)


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a DSN (RFC 3464 §2.3), as far as it could be read."""

    final_recipient: str | None
    original_recipient: str | None
    action: str
    # The RFC 3463 code ("5.1.1"), or None when missing or malformed.
    status: str | None
    diagnostic: str | None

    @property
    def is_hard(self) -> bool:
        return self.action == "failed" and self.status is not None and self.status[0] == "5"

    def names(self, address: str) -> bool:
        wanted = address.strip().lower()
        return any(
            candidate is not None and candidate.lower() == wanted
            for candidate in (self.final_recipient, self.original_recipient)
        )


@dataclass(frozen=True, slots=True)
class Report:
    """What a mail sent to a bounce address says."""

    kind: ReportKind
    recipients: tuple[RecipientStatus, ...] = ()
    feedback_type: str | None = None
    # The Amnex message id the returned original names, if it names one.
    original_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about a report for one message: its kind, and for a hard bounce, why."""

    kind: BounceKind
    status: str | None = None
    diagnostic: str | None = None
    error_code: str | None = None


def message_id_from_verp(address: str, bounce_domain: str) -> str | None:
    """The message id in `bounces+<id>@<bounce_domain>`, or None if the address is not one.

    The prefix and domain are matched without regard to case, and the id's letters are read
    as upper case: a relay that lowercases a local part still finds its message.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at or domain.rstrip(".").lower() != bounce_domain.rstrip(".").lower():
        return None
    prefix, plus, tag = local.partition("+")
    if not plus or prefix.lower() != VERP_LOCAL_PREFIX:
        return None
    head, underscore, tail = tag.partition("_")
    message_id = f"{head.lower()}{underscore}{tail.upper()}"
    return message_id if looks_like_id(message_id, "msg") else None


def parse_report(raw: bytes) -> Report:
    """Read a DSN or an ARF report; anything else (or anything unreadable) is `other`."""
    try:
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
        return _read(message)
    except Exception:
        # Hostile input reaches assorted corners of the stdlib parser (IndexError,
        # ValueError, HeaderParseError, LookupError for charsets…): a report we cannot read
        # is simply not one.
        return Report("other")


def _read(message: Message) -> Report:
    if message.get_content_type() != "multipart/report":
        return Report("other")
    report_type = str(message.get_param("report-type", "", header="content-type")).lower()
    parts = list(message.walk())
    original = _original_message_id(parts)
    if report_type == "delivery-status":
        status_part = next(
            (p for p in parts if p.get_content_type() in _DELIVERY_STATUS_TYPES), None
        )
        if status_part is None:
            return Report("other")
        blocks = _field_blocks(status_part)
        # The first block is about the message (Reporting-MTA, Arrival-Date, …).
        recipients = tuple(
            _recipient(block) for block in blocks[1 : MAX_RECIPIENT_BLOCKS + 1] if block.keys()
        )
        if not recipients:
            return Report("other")
        return Report("dsn", recipients=recipients, original_message_id=original)
    if report_type == "feedback-report":
        feedback_part = _first_of(parts, _FEEDBACK_TYPES)
        if feedback_part is None:
            return Report("other")
        blocks = _field_blocks(feedback_part)
        feedback_type = _first_token(blocks[0].get("Feedback-Type")) if blocks else None
        if feedback_type is None:
            return Report("other")
        return Report("arf", feedback_type=feedback_type, original_message_id=original)
    return Report("other")


def _first_of(parts: list[Message], content_types: frozenset[str]) -> Message | None:
    return next((part for part in parts if part.get_content_type() in content_types), None)


def _field_blocks(part: Message) -> list[Message]:
    """The header-style blocks of a `message/delivery-status` or `message/feedback-report`.

    The stdlib parses both into sub-messages, whatever their transfer encoding; a part sent
    base64 or quoted-printable (RFC 3464 allows it) is decoded and split on blank lines here.
    """
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list) and encoding not in ("base64", "quoted-printable"):
        return [block for block in payload if isinstance(block, Message)]
    if isinstance(payload, list):
        encoded = "\n".join(block.as_string() for block in payload if isinstance(block, Message))
    elif isinstance(payload, str):
        encoded = payload
    else:
        return []
    if encoding == "base64":
        data = base64.b64decode(encoded)  # characters outside the alphabet are skipped
    elif encoding == "quoted-printable":
        data = quopri.decodestring(encoded.encode("ascii", "replace"))
    else:
        data = encoded.encode("utf-8", "replace")
    text = data.decode("utf-8", errors="replace")
    parser = HeaderParser(policy=email.policy.default)
    chunks = (chunk.strip() for chunk in _BLANK_LINE.split(text))
    return [parser.parsestr(chunk + "\n") for chunk in chunks if chunk]


def _recipient(block: Message) -> RecipientStatus:
    status = _STATUS.match(_text(block.get("Status")) or "")
    return RecipientStatus(
        final_recipient=_address_field(block.get("Final-Recipient")),
        original_recipient=_address_field(block.get("Original-Recipient")),
        action=_first_token(block.get("Action")) or "",
        status=".".join(status.groups()) if status else None,
        diagnostic=_typed_value(block.get("Diagnostic-Code")),
    )


def _text(value: object) -> str | None:
    """A header value on one line (folding and runs of spaces collapsed, control characters
    such as NUL, which PostgreSQL refuses in text, dropped), or None."""
    if value is None:
        return None
    words = ("".join(c for c in word if c.isprintable()) for word in str(value).split())
    return " ".join(word for word in words if word) or None


def _first_token(value: object) -> str | None:
    text = _text(value)
    return text.split()[0].lower() if text else None


def _typed_value(value: object) -> str | None:
    """`type; value` fields (RFC 3464 §2.1.2): the value, without its type."""
    text = _text(value)
    if text is None:
        return None
    _, semicolon, rest = text.partition(";")
    return (rest.strip() if semicolon else text) or None


def _address_field(value: object) -> str | None:
    address = _typed_value(value)
    if address is None:
        return None
    return address.strip().strip("<>").strip() or None


def _original_message_id(parts: list[Message]) -> str | None:
    """The Amnex message id the returned original names: `X-Amnex-Message-Id`, or the
    local part of its `<message id@domain>` Message-ID."""
    original = _first_of(parts, _ORIGINAL_TYPES)
    if original is None:
        return None
    headers = _original_headers(original)
    if headers is None:
        return None
    explicit = _text(headers.get("X-Amnex-Message-Id"))
    if explicit is not None and looks_like_id(explicit, "msg"):
        return explicit
    match = _MESSAGE_ID_HEADER.fullmatch(_text(headers.get("Message-ID")) or "")
    if match is not None and looks_like_id(match.group(1), "msg"):
        return match.group(1)
    return None


def _original_headers(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list):
        first = payload[0] if payload else None
        return first if isinstance(first, Message) else None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return None
    return HeaderParser(policy=email.policy.default).parsestr(data.decode("utf-8", "replace"))


def judge(report: Report, *, message_id: str, address: str) -> Verdict:
    """What a report sent to message `message_id`'s bounce address means for that message,
    whose recipient was `address` (see the module's design note)."""
    if report.original_message_id is not None and report.original_message_id != message_id:
        return Verdict("unmatched")
    if report.kind == "arf":
        return Verdict("complaint") if report.feedback_type == "abuse" else Verdict("unmatched")
    if report.kind != "dsn":
        return Verdict("unmatched")
    named = [r for r in report.recipients if r.names(address)]
    if named:
        hard = next((r for r in named if r.is_hard), None)
    else:
        everyone_failed = all(r.is_hard for r in report.recipients)
        hard = report.recipients[0] if everyone_failed else None
    if hard is None or hard.status is None:
        return Verdict("soft")
    diagnostic = hard.diagnostic[:DIAGNOSTIC_MAX_LENGTH] if hard.diagnostic else None
    return Verdict(
        "hard", status=hard.status, diagnostic=diagnostic, error_code=bounce_error_code(hard)
    )


def bounce_error_code(recipient: RecipientStatus) -> str:
    """The message `error_code` for a permanent failure, by the channel's own classification
    of SMTP replies: the DSN's status decides, the diagnostic's wording refines (5.7.1 spam)."""
    text = f"{recipient.status} {recipient.diagnostic or ''}"
    code, retryable = classify_smtp_reply(550, text)
    # A 5xx reply is never retryable but for 530, which a DSN's 550 cannot be.
    return "carrier_rejected" if retryable else code
