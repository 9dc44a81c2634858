"""Privacy: every read and write of a data subject's records by address, for subject requests.

Design note. No address is stored in clear: a subject's rows are found by the blind index of
the normalised address (`privacy.keys`), the same platform-wide index every table keeps
(`messages.peer_index`, `opt_outs.address_index`, …), so an operator's request finds a person
in every account with one indexed look-up per table. Every query that names a subject for a
data-subject request lives here.

- A subject is a phone number or an email address, normalised as the suppression list stores
  it (`recipients.service.normalise_address("all", …)`). A phone subject's messages are its
  SMS and MMS; an email subject's, its email.
- Scope: a client's request covers its own account's records (`account_id`); an operator's
  request with no account covers every account, and the platform's own opt-outs.
- Erasure keeps two kinds of row, as the policy allows: the subject's opt-outs, reduced to
  the suppression marker that keeps them from being messaged again (the blind index; the
  sealed address and the evidence are removed), and each message as a billing line: id,
  account, channel, status, segments, price and timestamps, with the subject's address
  replaced by `ERASED`, its blind index removed and its content, metadata, error text and
  provider detail emptied. A message's events and parts go; so do the opt-out history, the
  inbound parts the subject sent and the personal fields of audit entries that named the
  subject in their target.
- Consent entries stay in the account's ledger, whose chain hashes only their non-personal
  fields and a salted digest of the personal ones (`recipients.models.ConsentEntry`): erasure
  removes the address, its index, the evidence and the salt, and the chain still verifies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from amnex.accounts.models import Account
from amnex.clock import utc_now
from amnex.compliance.addresses import normalise_email_address, normalise_phone_number
from amnex.errors import ValidationFailed
from amnex.messages.models import Message, MessageEvent, MessagePart
from amnex.messages.service import transition
from amnex.messages.status import CANCELABLE_STATUSES, FINAL_STATUSES, Status
from amnex.privacy.audit import record_audit
from amnex.privacy.keys import blind_index, load_keys, open_address
from amnex.privacy.logsafe import mask_text
from amnex.receipts.models import InboundPart
from amnex.recipients import service as recipients
from amnex.recipients.models import ConsentEntry, OptOut, OptOutEvent
from amnex.webhooks.models import WebhookDelivery, WebhookEvent, delete_webhook_events

SubjectKind = Literal["phone", "email"]
CORRECTABLE_FIELDS = ("contact_name", "email", "phone")
ERASED = "[erased]"
_PHONE_CHANNELS = ("sms", "mms")


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose records: a normalised address, and the accounts searched (None: every account)."""

    kind: SubjectKind
    address: str
    account_id: str | None

    @property
    def index(self) -> str:
        return blind_index(self.address)


def subject_of(address: str, account_id: str | None) -> Subject:
    """The subject named by `address` as typed (raises InvalidAddress)."""
    normalised = recipients.normalise_address(recipients.ALL_CHANNELS, address)
    kind: SubjectKind = "email" if "@" in normalised else "phone"
    return Subject(kind=kind, address=normalised, account_id=account_id)


def masked(address: str) -> str:
    """The form a completed request keeps: country code and last two digits, or the first
    character and the domain (`privacy.logsafe`)."""
    return mask_text(address)


# Messages


def _subject_messages(subject: Subject) -> ColumnElement[bool]:
    channels = ("email",) if subject.kind == "email" else _PHONE_CHANNELS
    condition = and_(Message.peer_index == subject.index, Message.channel.in_(channels))
    if subject.account_id is not None:
        condition = and_(Message.account_id == subject.account_id, condition)
    return condition


MESSAGE_COLUMNS = (
    "id",
    "account_id",
    "direction",
    "channel",
    "from",
    "to",
    "category",
    "status",
    "error_code",
    "provider_error_code",
    "segments",
    "encoding",
    "created_at",
    "send_at",
    "sent_at",
    "delivered_at",
    "failed_at",
    "updated_at",
)


async def subject_messages(session: AsyncSession, subject: Subject) -> list[dict[str, Any]]:
    """The subject's messages, metadata only (never content), oldest first."""
    rows = await session.execute(
        select(
            Message.id,
            Message.account_id,
            Message.direction,
            Message.channel,
            Message.from_addr,
            Message.to_addr,
            Message.category,
            Message.status,
            Message.error_code,
            Message.provider_error_code,
            Message.segments,
            Message.encoding,
            Message.created_at,
            Message.send_at,
            Message.sent_at,
            Message.delivered_at,
            Message.failed_at,
            Message.updated_at,
        )
        .where(_subject_messages(subject))
        .order_by(Message.created_at, Message.id)
    )
    found = [dict(zip(MESSAGE_COLUMNS, row, strict=True)) for row in rows]
    await load_keys({row["account_id"] for row in found})
    for row in found:
        row["from"], row["to"] = open_address(row["from"]), open_address(row["to"])
    return found


async def cancel_pending_messages(
    session: AsyncSession, subject: Subject, *, now: datetime, request_id: str
) -> int:
    """Cancel the subject's scheduled and queued messages (erasure); returns how many."""
    pending = list(
        await session.scalars(
            select(Message)
            .where(
                _subject_messages(subject),
                Message.status.in_([s.value for s in CANCELABLE_STATUSES]),
            )
            .with_for_update()
        )
    )
    for message in pending:
        transition(
            session,
            message,
            Status.CANCELED,
            at=now,
            detail={"source": "subject_request", "request_id": request_id},
        )
        message.next_attempt_at = None
    return len(pending)


async def count_in_flight(session: AsyncSession, subject: Subject) -> int:
    """The subject's messages not yet final (being sent, or sent and awaiting a receipt)."""
    count = await session.scalar(
        select(func.count())
        .select_from(Message)
        .where(
            _subject_messages(subject),
            Message.status.not_in([s.value for s in FINAL_STATUSES]),
        )
    )
    return int(count or 0)


# Opt-outs and consents


def _in_scope(
    column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None], subject: Subject
) -> ColumnElement[bool]:
    return column == subject.account_id if subject.account_id is not None else column.is_not(None)


async def subject_opt_outs(session: AsyncSession, subject: Subject) -> list[OptOut]:
    query = select(OptOut).where(OptOut.address_index == subject.index)
    if subject.account_id is not None:
        query = query.where(OptOut.account_id == subject.account_id)
    return list(await session.scalars(query.order_by(OptOut.created_at, OptOut.id)))


async def subject_consents(session: AsyncSession, subject: Subject) -> list[ConsentEntry]:
    query = select(ConsentEntry).where(ConsentEntry.address_index == subject.index)
    if subject.account_id is not None:
        query = query.where(ConsentEntry.account_id == subject.account_id)
    return list(await session.scalars(query.order_by(ConsentEntry.account_id, ConsentEntry.seq)))


async def restrict_subject(
    session: AsyncSession, subject: Subject, *, request_id: str
) -> tuple[str, bool]:
    """Stop every send to the subject: an "all"-channel opt-out (source `subject_request`),
    the account's or, for an operator's request about the platform, platform-wide. The gate
    and dispatch's re-check honour it as they honour any opt-out. Returns its id and whether
    it is new."""
    opt_out, created = await recipients.add_opt_out(
        session,
        account_id=subject.account_id,
        channel=recipients.ALL_CHANNELS,
        address=subject.address,
        source="subject_request",
        evidence={"request_id": request_id},
    )
    return opt_out.id, created


# Erasure


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def reduce_to_billing_lines(
    session: AsyncSession, where: ColumnElement[bool], *, now: datetime
) -> int:
    """Keep the messages `where` selects only as billing lines (erasure, account closure):
    id, account, channel, direction, category, status, segments, price and timestamps. The
    person's address becomes `ERASED` and its blind index goes; content, client metadata,
    error text, provider detail, callback and encoding report are emptied. Returns how many."""
    emptied: dict[str, Any] = {
        "subject": None,
        "body": None,
        "html": None,
        "meta": None,
        "error_message": None,
        "provider_detail": None,
        "status_callback": None,
        "encoding_report": None,
        "peer_index": None,
        "content_purged_at": now,
    }
    count = 0
    for direction, person in (("outbound", "to_addr"), ("inbound", "from_addr")):
        count += _rowcount(
            await session.execute(
                update(Message)
                .where(where, Message.direction == direction)
                .values({**emptied, person: ERASED})
                .execution_options(synchronize_session=False)
            )
        )
    return count


async def erase_subject(session: AsyncSession, subject: Subject) -> dict[str, Any]:
    """Erase the subject's records (call once none of their messages is in flight); returns
    the proof: rows removed and rows anonymised per table, and what was kept and why."""
    ids = list(await session.scalars(select(Message.id).where(_subject_messages(subject))))
    removed: dict[str, int] = {}
    anonymised: dict[str, int] = {}
    removed["message_events"] = 0
    removed["message_parts"] = 0
    removed["webhook_events"] = 0
    anonymised["messages"] = 0
    for start in range(0, len(ids), 500):
        chunk: Sequence[str] = ids[start : start + 500]
        removed["webhook_events"] += await delete_webhook_events(session, chunk)
        removed["message_events"] += _rowcount(
            await session.execute(delete(MessageEvent).where(MessageEvent.message_id.in_(chunk)))
        )
        removed["message_parts"] += _rowcount(
            await session.execute(delete(MessagePart).where(MessagePart.message_id.in_(chunk)))
        )
        anonymised["messages"] += await reduce_to_billing_lines(
            session, Message.id.in_(chunk), now=utc_now()
        )
    history = delete(OptOutEvent).where(OptOutEvent.address_index == subject.index)
    if subject.account_id is not None:
        history = history.where(OptOutEvent.account_id == subject.account_id)
    removed["opt_out_events"] = _rowcount(await session.execute(history))
    markers = update(OptOut).where(OptOut.address_index == subject.index)
    if subject.account_id is not None:
        markers = markers.where(OptOut.account_id == subject.account_id)
    kept_markers = _rowcount(
        await session.execute(
            markers.values(address=None, evidence=None).execution_options(synchronize_session=False)
        )
    )
    opt_out_ids = list(
        await session.scalars(
            select(OptOut.id).where(
                OptOut.address_index == subject.index, _in_scope(OptOut.account_id, subject)
            )
        )
    )
    consent_ids = list(
        await session.scalars(
            select(ConsentEntry.id).where(
                ConsentEntry.address_index == subject.index,
                _in_scope(ConsentEntry.account_id, subject),
            )
        )
    )
    for start in range(0, len(opt_out_ids) + len(consent_ids), 500):
        removed["webhook_events"] += await delete_webhook_events(
            session, (opt_out_ids + consent_ids)[start : start + 500]
        )
    removed["inbound_parts"] = 0
    if subject.kind == "phone" and subject.account_id is None:
        # Parts carry no account: only a platform-wide request may remove them.
        sources = (subject.index, blind_index(subject.address.lstrip("+")))
        removed["inbound_parts"] = _rowcount(
            await session.execute(delete(InboundPart).where(InboundPart.source.in_(sources)))
        )
    consents = _rowcount(
        await session.execute(
            update(ConsentEntry)
            .where(
                ConsentEntry.address_index == subject.index,
                _in_scope(ConsentEntry.account_id, subject),
            )
            .values(address=None, address_index=None, evidence=None, personal_salt=None)
            .execution_options(synchronize_session=False)
        )
    )
    anonymised["consent_entries"] = consents
    return {
        "removed": removed,
        "anonymised": anonymised,
        "retained": {
            "opt_outs": {
                "rows": kept_markers,
                "why": "suppression marker: the subject is never messaged again (only the "
                "keyed blind index of the address is kept; address and evidence removed)",
            },
            "messages": {
                "rows": anonymised["messages"],
                "why": "billing lines: address, content and metadata removed",
            },
            "consent_entries": {
                "rows": consents,
                "why": "ledger entries keep the account's chain verifiable; their address, "
                "its index and the evidence were removed",
            },
        },
    }


# Rectification


def check_corrections(
    corrections: Mapping[str, str] | None, *, rectification: bool
) -> dict[str, str] | None:
    """A rectification's corrections, normalised (raises ValidationFailed or InvalidAddress);
    refused on any other type."""
    if not rectification:
        if corrections:
            raise ValidationFailed(
                "corrections: only a rectification carries corrections", field="corrections"
            )
        return None
    if not corrections:
        raise ValidationFailed(
            "corrections: a rectification names at least one of " + ", ".join(CORRECTABLE_FIELDS),
            field="corrections",
        )
    checked: dict[str, str] = {}
    for name, value in corrections.items():
        where = f"corrections.{name}"
        if name not in CORRECTABLE_FIELDS:
            raise ValidationFailed(
                f"{where}: only {', '.join(CORRECTABLE_FIELDS)} can be corrected", field=where
            )
        value = value.strip()
        if name == "email":
            value = normalise_email_address(value, field=where)
        elif name == "phone":
            value = normalise_phone_number(value, field=where)
        elif not value or len(value) > 200:
            raise ValidationFailed(f"{where}: 1 to 200 characters", field=where)
        checked[name] = value
    return checked


async def rectify_subject(
    session: AsyncSession,
    subject: Subject,
    corrections: Mapping[str, str],
    *,
    now: datetime,
    request_id: str,
) -> list[str]:
    """Apply `corrections` to every account in scope whose contact is the subject; returns
    their ids. Each change is audited on the account's chain (field names only)."""
    contact = (
        func.lower(Account.email) == subject.address
        if subject.kind == "email"
        else Account.phone == subject.address
    )
    query = select(Account).where(contact).with_for_update()
    if subject.account_id is not None:
        query = query.where(Account.id == subject.account_id)
    accounts = list(await session.scalars(query.order_by(Account.id)))
    for account in accounts:
        for name, value in corrections.items():
            setattr(account, name, value)
        account.updated_at = now
        record_audit(
            session,
            actor="system",
            action="account.rectify",
            target_type="account",
            target_id=account.id,
            detail={"fields": sorted(corrections), "request_id": request_id},
        )
    return [account.id for account in accounts]


# Webhooks

WEBHOOK_COLUMNS = (
    "delivery_id",
    "event_id",
    "account_id",
    "type",
    "about",
    "endpoint_id",
    "status",
    "attempts",
    "last_attempt_at",
    "last_outcome",
    "last_status_code",
    "created_at",
)


async def subject_webhook_deliveries(
    session: AsyncSession, about: Sequence[str]
) -> list[dict[str, Any]]:
    """The webhook deliveries of events about these records (the subject's messages,
    opt-outs and consents), oldest first: what was sent to whom, and how it went."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(about), 500):
        rows = await session.execute(
            select(
                WebhookDelivery.id,
                WebhookEvent.id,
                WebhookEvent.account_id,
                WebhookEvent.type,
                WebhookEvent.subject_id,
                WebhookDelivery.endpoint_id,
                WebhookDelivery.status,
                WebhookDelivery.attempts,
                WebhookDelivery.last_attempt_at,
                WebhookDelivery.last_outcome,
                WebhookDelivery.last_status_code,
                WebhookDelivery.created_at,
            )
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookEvent.subject_id.in_(about[start : start + 500]))
        )
        found += [dict(zip(WEBHOOK_COLUMNS, row, strict=True)) for row in rows]
    return sorted(found, key=lambda row: (row["created_at"], row["delivery_id"]))
