"""Messages: turning a send request into a message row, and reading, listing, canceling messages.

`prepare_message` is pure (no I/O): the accept path validates and builds the row before it is
handed to the group-commit writer (`messages.accept`), so a rejected request never touches the
database. Validation does no network look-ups: no DNS at accept time. It also runs the
compliance gate's pure rules (`compliance.gate.screen`): an address or geo rejection is
raised here; the rest of the gate is decided by the writer, in the transaction that would
store the message, once the recipient's opt-outs and consents are read (`apply_gate`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.service import KeyContext
from amnex.carriers.routing import RouteTable
from amnex.channels.smpp.text import EncodedText, prepare_text, smart_replace
from amnex.compliance.addresses import normalise_email_address, normalise_phone_number
from amnex.compliance.gate import Candidate, RecipientFacts, Screened, decide, screen
from amnex.compliance.geo import DEFAULT_GEO_POLICY, GeoPolicy
from amnex.compliance.verdict import Defer, Reject
from amnex.db.ids import looks_like_id, new_id
from amnex.errors import (
    ComplianceRejected,
    InvalidAddress,
    InvalidRequest,
    NoRoute,
    NotFound,
    SendAtInPast,
    SenderNotAllowed,
    ValidationFailed,
)
from amnex.messages.models import Message, MessageEvent
from amnex.messages.schemas import MessageOut, SendMessageRequest
from amnex.messages.status import CANCELABLE_STATUSES, Status, check_transition
from amnex.privacy.keys import blind_index, open_address, seal_address
from amnex.recipients.facts import FactsQuery

SEND_AT_MAX_AHEAD = timedelta(days=35)
# A send_at slightly in the past (clock skew, a slow client) means "now", not an error.
SEND_AT_SKEW = timedelta(seconds=60)
FROM_MAX_LENGTH = 400  # the width of messages.from_addr
SMS_MAX_CHARACTERS = 1600


@dataclass(frozen=True, slots=True)
class GateCheck:
    """The part of the compliance gate that waits for the recipient's facts."""

    candidate: Candidate
    screened: Screened
    facts: FactsQuery


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A validated message ready to insert: the row and its first event; `to` is the
    recipient in clear (the row holds it sealed)."""

    row: dict[str, Any]
    event: dict[str, Any]
    gate: GateCheck | None = None
    to: str = ""


def address_columns(
    account_id: str, *, direction: str, from_addr: str, to_addr: str
) -> dict[str, str]:
    """A message's address columns as stored: the person's address (the recipient of an
    outbound message, the sender of an inbound one) sealed under the account's data key and
    indexed in `peer_index`; the account's own address on the other side as it is."""
    if direction == "inbound":
        return {
            "from_addr": seal_address(account_id, from_addr),
            "to_addr": to_addr,
            "peer_index": blind_index(from_addr),
        }
    return {
        "from_addr": from_addr,
        "to_addr": seal_address(account_id, to_addr),
        "peer_index": blind_index(to_addr),
    }


def compliance_error(verdict: Reject) -> ComplianceRejected:
    return ComplianceRejected.for_code(verdict.code, verdict.detail, rule=verdict.rule)


def apply_gate(
    prepared: PreparedMessage, facts: RecipientFacts
) -> tuple[PreparedMessage, ComplianceRejected | None]:
    """The message as it will be stored once the gate has decided, or the rejection.

    A deferral (quiet hours) stores the message `scheduled` until the window opens, with
    the rule that decided in its first event. Pure: the writer calls it on its own thread.
    """
    gate = prepared.gate
    if gate is None:
        return prepared, None
    verdict = decide(gate.candidate, gate.screened, facts)
    if isinstance(verdict, Reject):
        return prepared, compliance_error(verdict)
    if isinstance(verdict, Defer) and verdict.until > prepared.row["next_attempt_at"]:
        row = {**prepared.row, "status": Status.SCHEDULED.value, "next_attempt_at": verdict.until}
        detail = {
            "send_at": verdict.until.isoformat(),
            "rule": verdict.rule,
            "reason": verdict.detail,
        }
        event = {**prepared.event, "status": Status.SCHEDULED.value, "detail": detail}
        return PreparedMessage(row=row, event=event, gate=gate, to=prepared.to), None
    return prepared, None


def normalise_recipient(channel: str, to: str) -> str:
    if channel == "email":
        if "<" in to or "," in to:
            raise InvalidAddress("to: one bare email address, without a display name", field="to")
        return normalise_email_address(to, field="to")
    if channel in ("sms", "mms"):
        return normalise_phone_number(to, field="to")
    if not to.strip():
        raise InvalidAddress("to: a device token is required", field="to")
    return to


def normalise_address_filter(to: str) -> str:
    """The stored form of an address typed into a list filter, so that `alex@Example.COM` or
    `+1 312 555 0100` finds what was stored normalised. Anything unparseable is matched as
    given."""
    try:
        if "@" in to:
            return normalise_email_address(to, field="to")
        return normalise_phone_number(to, field="to")
    except InvalidAddress:
        return to


def resolve_sender(ctx: KeyContext, channel: str, requested: str | None) -> str:
    """The `from` to use: the requested sender if the account may use it, else its default."""
    allowed = ctx.senders.get(channel, frozenset())
    if requested is None:
        default = ctx.default_senders.get(channel)
        if default is None:
            raise ValidationFailed(
                f"from: the account has no default {channel} sender; give one", field="from"
            )
        return default
    if channel != "email":
        if requested not in allowed:
            raise SenderNotAllowed(f"from: {requested!r} is not a sender of this account")
        return requested
    name, addr = parseaddr(requested)
    if "@" not in addr:
        raise InvalidAddress(f"from: {requested!r} is not an email address", field="from")
    addr = normalise_email_address(addr, field="from")
    lowered = addr.lower()
    domain = "@" + lowered.rpartition("@")[2]
    if lowered not in allowed and domain not in allowed:
        raise SenderNotAllowed(
            f"from: {addr} is not a verified address or domain of this account", field="from"
        )
    # Address quotes the name where RFC 5322 needs it but keeps it readable (formataddr would
    # store a non-ASCII name as an RFC 2047 encoded word, and show it so in the API).
    username, _, host = addr.rpartition("@")
    sender = str(Address(display_name=name, username=username, domain=host)) if name else addr
    if len(sender) > FROM_MAX_LENGTH:
        # Quoting the display name can lengthen what the client sent.
        raise ValidationFailed(
            f"from: at most {FROM_MAX_LENGTH} characters once formatted as a header",
            field="from",
        )
    return sender


def prepare_message(
    ctx: KeyContext,
    request: SendMessageRequest,
    *,
    now: datetime,
    routes: RouteTable,
    geo: GeoPolicy = DEFAULT_GEO_POLICY,
) -> PreparedMessage:
    """Validate a send request against the account and build its row. Raises AmnexError
    (a compliance rule's rejection as `ComplianceRejected`)."""
    channel = request.channel
    to = normalise_recipient(channel, request.to)
    if channel == "email":
        if not request.subject:
            raise ValidationFailed("subject: required for email", field="subject")
        if not request.body and not request.html:
            raise ValidationFailed("body or html: email needs at least one", field="body")
    elif not request.body:
        raise ValidationFailed(f"body: required for {channel}", field="body")
    body = request.body
    sms: EncodedText | None = None
    if channel == "sms" and body is not None:
        if len(body) > SMS_MAX_CHARACTERS:
            raise ValidationFailed(
                f"body: at most {SMS_MAX_CHARACTERS} characters for SMS", field="body"
            )
        sms = prepare_text(body, smart_encoding=bool(ctx.account_settings.get("smart_encoding")))
        if sms.replaced:
            body = smart_replace(body)[0]
    # Before the sender: an account has no senders on a channel nothing can deliver, and
    # "no default sender" would hide the real reason.
    route = routes.best_route(channel, ctx.account_id, to)
    if route is None and channel not in routes.static_channels:
        if channel in ("email", "sms") and channel not in routes.static_channels:
            detail = f"to: no route for {channel} to this destination"
        else:
            detail = f"channel: no carrier connection is configured for {channel}"
        raise NoRoute(detail, field="to" if detail.startswith("to") else "channel")
    from_addr = resolve_sender(ctx, channel, request.from_)

    send_at = request.send_at
    status = Status.QUEUED
    due = now
    if send_at is not None:
        if send_at < now - SEND_AT_SKEW:
            raise SendAtInPast(f"send_at: {send_at.isoformat()} is in the past", field="send_at")
        if send_at > now + SEND_AT_MAX_AHEAD:
            raise ValidationFailed("send_at: at most 35 days ahead", field="send_at")
        if send_at > now:
            status = Status.SCHEDULED
            due = send_at
    account = ctx.rules
    candidate = Candidate(
        channel=channel,
        to=to,
        category=request.category,
        body=body,
        subject=request.subject,
        html=request.html,
    )
    allow_landline = route is not None and route.allow_landline
    screened = screen(candidate, account, geo=geo, now=due, allow_landline=allow_landline)
    if screened.early is not None:
        raise compliance_error(screened.early)
    peer_index = blind_index(to)
    gate = GateCheck(
        candidate,
        screened,
        FactsQuery(
            account_id=ctx.account_id,
            channel=channel,
            address_index=peer_index,
            consent=screened.needs_consent,
            first_contact=screened.needs_first_contact,
        ),
    )
    expires_at = (
        max(now, send_at or now) + timedelta(seconds=request.validity_period_s)
        if request.validity_period_s
        else None
    )
    message_id = new_id("msg")
    # Columns that are always empty at accept are left out: the database stores NULL.
    row: dict[str, Any] = {
        "id": message_id,
        "account_id": ctx.account_id,
        "channel": channel,
        "direction": "outbound",
        "from_addr": from_addr,
        "to_addr": seal_address(ctx.account_id, to),
        "peer_index": peer_index,  # address_columns, with the index computed once
        "connector_id": routes.primary_connector(route),
        "category": request.category,
        "status": status.value,
        "subject": request.subject,
        "body": body,
        "html": request.html,
        "send_at": send_at,
        "expires_at": expires_at,
        "status_callback": str(request.status_callback) if request.status_callback else None,
        "meta": request.metadata,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": due,
        "attempts": 0,
        "event_seq": 1,
    }
    if sms is not None:
        row["segments"] = sms.segments
        row["encoding"] = sms.encoding
        if sms.replaced or sms.forced_ucs2_by:
            row["encoding_report"] = {
                "replaced": list(sms.replaced),
                "ucs2_characters": list(sms.forced_ucs2_by),
            }
    event: dict[str, Any] = {
        "message_id": message_id,
        "account_id": ctx.account_id,
        "seq": 1,
        "status": status.value,
        "at": now,
        "error_code": None,
        "detail": {"send_at": due.isoformat()} if status is Status.SCHEDULED else None,
    }
    if screened.flags:
        flags = [{"code": f.code, "detail": f.detail} for f in screened.flags]
        event["detail"] = {**(event["detail"] or {}), "flags": flags}
    return PreparedMessage(row=row, event=event, gate=gate, to=to)


# Message object field -> column, in the order of DESIGN.md's message object.
_OUT_FIELDS = {
    "id": "id",
    "account_id": "account_id",
    "channel": "channel",
    "direction": "direction",
    "from_": "from_addr",
    "to": "to_addr",
    "category": "category",
    "status": "status",
    "error_code": "error_code",
    "error_message": "error_message",
    "provider_error_code": "provider_error_code",
    "segments": "segments",
    "encoding": "encoding",
    "encoding_report": "encoding_report",
    "price": "price",
    "subject": "subject",
    "body": "body",
    "html": "html",
    "content_purged_at": "content_purged_at",
    "send_at": "send_at",
    "expires_at": "expires_at",
    "status_callback": "status_callback",
    "attempts": "attempts",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "sent_at": "sent_at",
    "delivered_at": "delivered_at",
    "failed_at": "failed_at",
    "metadata": "meta",
}


_OUT_ALIASES = {name: "from" if name == "from_" else name for name in _OUT_FIELDS}


def message_out(message: Message | Mapping[str, Any]) -> MessageOut:
    """The API shape of a message row (an ORM object or a row dict), addresses opened."""
    get = message.get if isinstance(message, Mapping) else message.__dict__.get
    out = {name: get(column) for name, column in _OUT_FIELDS.items()}
    out["to"] = open_address(out["to"])
    out["from_"] = open_address(out["from_"])
    return MessageOut.model_validate(out)


def message_json(row: Mapping[str, Any], *, to: str) -> bytes:
    """`message_out(row)` as JSON, serialised straight from a freshly prepared row.

    The accept path's response: the row's values come from a validated request, so building
    and re-validating a model only to serialise it again is skipped. pydantic-core's
    serialiser writes the same JSON as the model would (same date and decimal forms); a test
    holds the two equal.
    """
    out = {_OUT_ALIASES[name]: row.get(column) for name, column in _OUT_FIELDS.items()}
    out["to"] = to
    return to_json(out)


async def get_message(session: AsyncSession, account_id: str, message_id: str) -> Message | None:
    if not looks_like_id(message_id, "msg"):
        return None
    message = await session.get(Message, message_id)
    if message is None or message.account_id != account_id:
        return None
    return message


async def get_message_or_raise(session: AsyncSession, account_id: str, message_id: str) -> Message:
    message = await get_message(session, account_id, message_id)
    if message is None:
        raise NotFound(f"no message {message_id}")
    return message


@dataclass(frozen=True, slots=True)
class MessageFilter:
    status: str | None = None
    channel: str | None = None
    to: str | None = None
    from_: str | None = None
    direction: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def encode_cursor(message_id: str) -> str:
    return base64.urlsafe_b64encode(message_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest("cursor: not a cursor this API returned", field="cursor") from exc
    if not looks_like_id(value, "msg"):
        raise InvalidRequest("cursor: not a cursor this API returned", field="cursor")
    return value


async def list_messages(
    session: AsyncSession,
    account_id: str,
    filters: MessageFilter,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Message], str | None]:
    """Newest first; ids are time-ordered, so the cursor is the last id seen."""
    query: Select[Message] = select(Message).where(Message.account_id == account_id)
    if filters.status:
        query = query.where(Message.status == filters.status)
    if filters.channel:
        query = query.where(Message.channel == filters.channel)
    # The person's side is matched by its blind index, the account's own side as stored.
    if filters.to:
        to = normalise_address_filter(filters.to)
        query = query.where(
            or_(
                and_(Message.direction == "outbound", Message.peer_index == blind_index(to)),
                and_(Message.direction == "inbound", Message.to_addr == to),
            )
        )
    if filters.from_:
        from_ = normalise_address_filter(filters.from_)
        query = query.where(
            or_(
                and_(Message.direction == "inbound", Message.peer_index == blind_index(from_)),
                and_(Message.direction == "outbound", Message.from_addr == from_),
            )
        )
    if filters.direction:
        query = query.where(Message.direction == filters.direction)
    if filters.created_after:
        query = query.where(Message.created_at >= filters.created_after)
    if filters.created_before:
        query = query.where(Message.created_at < filters.created_before)
    if cursor:
        query = query.where(Message.id < decode_cursor(cursor))
    rows = list(await session.scalars(query.order_by(Message.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def list_events(session: AsyncSession, message_id: str) -> list[MessageEvent]:
    rows = await session.scalars(
        select(MessageEvent).where(MessageEvent.message_id == message_id).order_by(MessageEvent.seq)
    )
    return list(rows)


def event_row(
    message_id: str,
    account_id: str,
    seq: int,
    status: Status,
    *,
    at: datetime,
    error_code: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `message_events` row for a bulk insert (the hot paths write events in one statement)."""
    return {
        "message_id": message_id,
        "account_id": account_id,
        "seq": seq,
        "status": status.value,
        "at": at,
        "error_code": error_code,
        "detail": detail,
    }


def add_event(
    session: AsyncSession,
    message: Message,
    status: Status,
    *,
    at: datetime,
    error_code: str | None = None,
    detail: dict[str, Any] | None = None,
) -> MessageEvent:
    """Record a transition already applied to `message` (bumps its event sequence)."""
    message.event_seq += 1
    event = MessageEvent(
        message_id=message.id,
        account_id=message.account_id,
        seq=message.event_seq,
        status=status.value,
        at=at,
        error_code=error_code,
        detail=detail,
    )
    session.add(event)
    return event


def transition(
    session: AsyncSession,
    message: Message,
    target: Status,
    *,
    at: datetime,
    error_code: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Move a message to `target` through the transition table, with its event."""
    check_transition(Status(message.status), target)
    message.status = target.value
    message.updated_at = at
    add_event(session, message, target, at=at, error_code=error_code, detail=detail)


async def cancel_message(
    session: AsyncSession, account_id: str, message_id: str, *, now: datetime
) -> Message:
    """Cancel a scheduled or queued message; a message already being sent cannot be recalled."""
    query = select(Message).where(Message.id == message_id).with_for_update()
    message = await session.scalar(query) if looks_like_id(message_id, "msg") else None
    if message is None or message.account_id != account_id:
        raise NotFound(f"no message {message_id}")
    if Status(message.status) not in CANCELABLE_STATUSES:
        check_transition(Status(message.status), Status.CANCELED)
    transition(session, message, Status.CANCELED, at=now, detail={"source": "api"})
    message.next_attempt_at = None
    message.failed_at = None
    return message
