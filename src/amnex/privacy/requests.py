"""Privacy: data-subject requests (policy §9) — filed, processed, extended, exported.

Design note.

- A request is filed by a client (the controller, for a recipient of its messages: its own
  account's records) or by an operator (for one account, or with no account for the whole
  platform). Types: `access`, `portability`, `rectification`, `erasure`, `restriction`,
  `objection`.
- Rectification corrects the contact data Amnex holds about the subject: the contact name,
  email and phone of each account (in scope) whose contact is the subject — client staff, for
  whom an operator files it. What was sent to an address is a record of that sending and is
  not rewritten; a recipient whose address changed is served by an opt-out or consent for the
  new one. The request carries the corrections (`contact_name`, `email`, `phone`); the result
  names the accounts and fields corrected, never the values.
- Status: `received` → `in_progress` → `completed` (or `rejected`). It is due one month
  (`DUE_DAYS`) after it was received; it may be extended once, by up to two months
  (`EXTENSION_MAX_DAYS`), with a reason. Every step appends a `subject_request_events` row
  and an audit entry whose subject address is a personal field.
- Processing runs in the request that files it, in the caller's transaction: a subject's
  records are read with a handful of indexed queries. An erasure whose subject has a message
  still in flight (`sending`, or `sent` and awaiting its receipt) cancels what is only
  scheduled or queued, stays `in_progress`, and finishes on a later run
  (`process_subject_request`, `POST …/{id}/process`, or `process_open_requests` for a
  periodic chore) once those messages are final. Each run is safe to repeat.
- The address is kept while the request is open; at completion it is reduced to its masked
  form (`address_masked`), which is what the proof needs. An access or portability export is
  built at completion and stored (`subject_request_exports`) for `EXPORT_TTL_DAYS`; it holds
  metadata only, never message content.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, Index, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from amnex.clock import utc_now
from amnex.db.base import Base
from amnex.db.ids import looks_like_id, new_id
from amnex.errors import Conflict, NotFound, ValidationFailed
from amnex.privacy import subjects
from amnex.privacy.audit import AuditEntry, delete_audit_personal, record_audit
from amnex.privacy.keys import SealedBytes, SealedText
from amnex.privacy.records import Records
from amnex.recipients import service as recipients

REQUEST_TYPES = ("access", "portability", "rectification", "erasure", "restriction", "objection")
EXPORT_TYPES = frozenset({"access", "portability"})
OPEN_STATUSES = ("received", "in_progress")
DUE_DAYS = 30
EXTENSION_MAX_DAYS = 61
EXPORT_TTL_DAYS = 30
EXPORT_SCHEMA_VERSION = 1


class SubjectRequest(Base):
    """One data-subject request (see the module's design note)."""

    __tablename__ = "subject_requests"
    __table_args__ = (Index(None, "account_id", "id"), Index(None, "status", "due_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    type: Mapped[str] = mapped_column(String(16))
    channel_kind: Mapped[str] = mapped_column(String(8))
    # The normalised address while open; null once completed (`address_masked` stays).
    address: Mapped[str | None] = mapped_column(SealedText)  # under the platform data key
    address_masked: Mapped[str] = mapped_column(String(320))
    note: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(12))
    received_at: Mapped[datetime]
    due_at: Mapped[datetime]
    extended_until: Mapped[datetime | None]
    extension_reason: Mapped[str | None] = mapped_column(String(500))
    requested_by: Mapped[str] = mapped_column(String(120))
    result: Mapped[dict[str, Any] | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class SubjectRequestEvent(Base):
    """The request's trail: one row per step. Rows are only inserted."""

    __tablename__ = "subject_request_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("subject_requests.id"), index=True)
    at: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(120))
    detail: Mapped[dict[str, Any] | None]


class SubjectRequestExport(Base):
    """The ZIP an access or portability request produced, until `expires_at`."""

    __tablename__ = "subject_request_exports"

    request_id: Mapped[str] = mapped_column(ForeignKey("subject_requests.id"), primary_key=True)
    data: Mapped[bytes] = mapped_column(SealedBytes)  # under the platform data key
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: `api_key:key_…` or `operator:<name>` with its `op_…` id (audit), and the
    pseudonymous form the request's own rows keep."""

    audit: str
    pseudonym: str
    actor_id: str | None = None
    reason: str | None = None


# The worker, finishing requests that waited (an erasure waiting for in-flight messages).
SYSTEM_ACTOR = Actor(audit="system", pseudonym="system")


def _step(
    session: AsyncSession,
    request: SubjectRequest,
    action: str,
    actor: Actor,
    detail: dict[str, Any] | None = None,
    *,
    address: str | None = None,
) -> None:
    now = utc_now()
    session.add(
        SubjectRequestEvent(
            id=new_id("dse"),
            request_id=request.id,
            at=now,
            action=action,
            actor=actor.pseudonym,
            detail=detail,
        )
    )
    record_audit(
        session,
        actor=actor.audit,
        actor_id=actor.actor_id,
        action=f"subject_request.{action}",
        target_type="subject_request",
        target_id=request.id,
        account_id=request.account_id,
        detail={
            "type": request.type,
            **(detail or {}),
            **({"address": address} if address else {}),
        },
        personal=("address",),
        reason=actor.reason,
    )


async def file_subject_request(
    session: AsyncSession,
    *,
    account_id: str | None,
    type_: str,
    address: str,
    note: str | None,
    actor: Actor,
    records: Records,
    export_ttl_days: int = EXPORT_TTL_DAYS,
    corrections: dict[str, str] | None = None,
) -> SubjectRequest:
    """Record a request and process it at once (see the design note)."""
    if type_ not in REQUEST_TYPES:
        raise ValidationFailed(f"type: one of {', '.join(REQUEST_TYPES)}", field="type")
    subject = subjects.subject_of(address, account_id)
    checked = subjects.check_corrections(corrections, rectification=type_ == "rectification")
    now = utc_now()
    request = SubjectRequest(
        id=new_id("dsr"),
        account_id=account_id,
        type=type_,
        channel_kind=subject.kind,
        address=subject.address,
        address_masked=subjects.masked(subject.address),
        note=note,
        status="received",
        received_at=now,
        due_at=now + timedelta(days=DUE_DAYS),
        requested_by=actor.pseudonym,
        updated_at=now,
    )
    session.add(request)
    _step(session, request, "received", actor, address=subject.address)
    await process_subject_request(
        session, request, actor, records, export_ttl_days, corrections=checked
    )
    return request


async def process_subject_request(
    session: AsyncSession,
    request: SubjectRequest,
    actor: Actor,
    records: Records,
    export_ttl_days: int = EXPORT_TTL_DAYS,
    *,
    corrections: dict[str, str] | None = None,
) -> SubjectRequest:
    """Carry an open request as far as it can go now; a no-op once it is closed (a
    rectification completes in the call that files it, with its `corrections`)."""
    if request.status not in OPEN_STATUSES or request.address is None:
        return request
    subject = subjects.Subject(
        kind="email" if request.channel_kind == "email" else "phone",
        address=request.address,
        account_id=request.account_id,
    )
    now = utc_now()
    if request.status == "received":
        request.status = "in_progress"
        request.updated_at = now
        _step(session, request, "in_progress", actor)
    if request.type in EXPORT_TYPES:
        data, counts = await build_export(session, request, subject, records, now=now)
        session.add(
            SubjectRequestExport(
                request_id=request.id,
                data=data,
                created_at=now,
                expires_at=now + timedelta(days=export_ttl_days),
            )
        )
        result: dict[str, Any] = {"counts": counts, "export_bytes": len(data)}
    elif request.type == "erasure":
        canceled = await subjects.cancel_pending_messages(
            session, subject, now=now, request_id=request.id
        )
        waiting = await subjects.count_in_flight(session, subject)
        if waiting:
            request.result = {"canceled_messages": canceled, "waiting_for_messages": waiting}
            request.updated_at = now
            _step(session, request, "waiting", actor, dict(request.result))
            return request
        result = await subjects.erase_subject(session, subject)
        result["canceled_messages"] = canceled + int(
            (request.result or {}).get("canceled_messages", 0)
        )
    elif request.type == "rectification":
        corrected = await subjects.rectify_subject(
            session, subject, corrections or {}, now=now, request_id=request.id
        )
        result = {"corrected": corrected, "fields": sorted(corrections or {})}
    else:  # restriction, objection
        opt_out_id, created = await subjects.restrict_subject(
            session, subject, request_id=request.id
        )
        result = {"opt_out_id": opt_out_id, "opt_out_created": created}
    request.status = "completed"
    request.completed_at = now
    request.updated_at = now
    request.result = result
    request.address = None
    _step(session, request, "completed", actor, {"result": result})
    if request.type == "erasure":
        # The trail of this request named the subject: its personal fields go too.
        await session.flush()
        entry_ids = await session.scalars(
            select(AuditEntry.id).where(
                AuditEntry.target_type == "subject_request", AuditEntry.target_id == request.id
            )
        )
        await delete_audit_personal(session, entry_ids=list(entry_ids))
    return request


async def process_open_requests(
    session: AsyncSession, actor: Actor, records: Records, *, limit: int = 100
) -> int:
    """Run every open request once more (an erasure waiting for its messages); returns how
    many completed."""
    rows = await session.scalars(
        select(SubjectRequest)
        .where(SubjectRequest.status.in_(OPEN_STATUSES))
        .order_by(SubjectRequest.due_at)
        .limit(limit)
    )
    done = 0
    for request in list(rows):
        await process_subject_request(session, request, actor, records)
        done += request.status == "completed"
    return done


async def extend_subject_request(
    session: AsyncSession, request: SubjectRequest, *, days: int, reason: str, actor: Actor
) -> SubjectRequest:
    """Extend the deadline once, by up to two months, with a reason."""
    if request.extended_until is not None:
        raise Conflict(f"{request.id} was already extended (once is the limit)")
    if request.status not in OPEN_STATUSES:
        raise Conflict(f"{request.id} is {request.status}: only an open request is extended")
    if not 1 <= days <= EXTENSION_MAX_DAYS:
        raise ValidationFailed(f"days: 1 to {EXTENSION_MAX_DAYS}", field="days")
    request.extended_until = request.due_at + timedelta(days=days)
    request.extension_reason = reason
    request.updated_at = utc_now()
    _step(
        session,
        request,
        "extended",
        actor,
        {"days": days, "extended_until": request.extended_until.isoformat()},
    )
    return request


# Reading


async def get_subject_request_or_raise(
    session: AsyncSession, request_id: str, account_id: str | None, *, any_account: bool = False
) -> SubjectRequest:
    """The request, if the account filed it (or, for an operator, `any_account`)."""
    request = (
        await session.get(SubjectRequest, request_id) if looks_like_id(request_id, "dsr") else None
    )
    if request is None or (not any_account and request.account_id != account_id):
        raise NotFound(f"no subject request {request_id}")
    return request


async def list_subject_requests(
    session: AsyncSession,
    account_id: str | None,
    *,
    any_account: bool = False,
    status: str | None = None,
    limit: int,
    after: str | None = None,
) -> tuple[list[SubjectRequest], str | None]:
    """Requests newest first; the cursor is the last id seen (ids sort by time)."""
    query = select(SubjectRequest)
    # An operator without an account names every account; a client always names its own.
    if not any_account or account_id is not None:
        query = query.where(SubjectRequest.account_id == account_id)
    if status:
        query = query.where(SubjectRequest.status == status)
    if after:
        query = query.where(SubjectRequest.id < after)
    rows = list(await session.scalars(query.order_by(SubjectRequest.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


async def request_events(session: AsyncSession, request_id: str) -> list[SubjectRequestEvent]:
    rows = await session.scalars(
        select(SubjectRequestEvent)
        .where(SubjectRequestEvent.request_id == request_id)
        .order_by(SubjectRequestEvent.at, SubjectRequestEvent.id)
    )
    return list(rows)


async def get_export_or_raise(
    session: AsyncSession, request: SubjectRequest, actor: Actor
) -> bytes:
    """The request's ZIP (audited as a disclosure of the subject's records)."""
    if request.type not in EXPORT_TYPES:
        raise Conflict(f"{request.id} is a {request.type} request: it has no export")
    if request.status != "completed":
        raise Conflict(f"{request.id} is {request.status}: its export is not ready")
    export = await session.get(SubjectRequestExport, request.id)
    if export is None or export.expires_at <= utc_now():
        raise NotFound(f"the export of {request.id} has expired")
    _step(session, request, "exported", actor, {"bytes": len(export.data)})
    return export.data


# The export


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    # A spreadsheet runs a cell that starts like a formula (E.164 numbers are left alone).
    if text[:1] in ("=", "@", "-", "\t", "\r") or (text[:1] == "+" and not text[1:].isdigit()):
        return "'" + text
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


OPT_OUT_COLUMNS = ("id", "account_id", "channel", "address", "source", "evidence", "created_at")
CONSENT_COLUMNS = (
    "id",
    "account_id",
    "seq",
    "channel",
    "address",
    "purpose",
    "action",
    "source",
    "text_shown",
    "evidence",
    "occurred_at",
    "recorded_at",
    "hash",
)


def _table_files(
    name: str, columns: Sequence[str], rows: list[dict[str, Any]]
) -> list[tuple[str, bytes]]:
    as_json = json.dumps(
        [{c: _json_value(row[c]) for c in columns} for row in rows],
        ensure_ascii=False,
        indent=2,
    ).encode()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns])
    return [(f"{name}.json", as_json), (f"{name}.csv", buffer.getvalue().encode())]


async def build_export(
    session: AsyncSession,
    request: SubjectRequest,
    subject: subjects.Subject,
    records: Records,
    *,
    now: datetime,
) -> tuple[bytes, dict[str, int]]:
    """The ZIP of every record about the subject, in the schema of `docs/privacy.md`
    (schema version `EXPORT_SCHEMA_VERSION`); returns it and the row count per file."""
    messages = await subjects.subject_messages(session, subject)
    opt_outs = [
        recipients.opt_out_out(o) for o in await subjects.subject_opt_outs(session, subject)
    ]
    consents = [
        recipients.consent_out(c) for c in await subjects.subject_consents(session, subject)
    ]
    webhooks = await subjects.subject_webhook_deliveries(
        session,
        [m["id"] for m in messages] + [o["id"] for o in opt_outs] + [c["id"] for c in consents],
    )
    counts = {
        "messages": len(messages),
        "opt_outs": len(opt_outs),
        "consents": len(consents),
        "webhook_deliveries": len(webhooks),
    }
    manifest = {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "request_id": request.id,
        "type": request.type,
        "subject": {"kind": subject.kind, "address": subject.address},
        "scope": {"account_id": subject.account_id, "all_accounts": subject.account_id is None},
        "generated_at": _json_value(now),
        "files": {
            "messages": list(subjects.MESSAGE_COLUMNS),
            "opt_outs": list(OPT_OUT_COLUMNS),
            "consents": list(CONSENT_COLUMNS),
            "webhook_deliveries": list(subjects.WEBHOOK_COLUMNS),
        },
        "counts": counts,
        "not_included": {
            "message_content": "message content is purged at its final status and never "
            "exported; the controller reads live content through the messages API",
            "webhook_payloads": "each delivery's payload held the state of the record it is "
            "about, which the other files give; response bodies are never kept",
        },
        "records_of_processing": records.model_dump(mode="json"),
    }
    files = [("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2).encode())]
    files += _table_files("messages", subjects.MESSAGE_COLUMNS, messages)
    files += _table_files("opt_outs", OPT_OUT_COLUMNS, opt_outs)
    files += _table_files("consents", CONSENT_COLUMNS, consents)
    files += _table_files("webhook_deliveries", subjects.WEBHOOK_COLUMNS, webhooks)
    buffer = io.BytesIO()
    stamp = now.astimezone(UTC).timetuple()[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=stamp), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue(), counts


def subject_request_out(
    request: SubjectRequest, events: Sequence[SubjectRequestEvent] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": request.id,
        "account_id": request.account_id,
        "type": request.type,
        "channel_kind": request.channel_kind,
        "address": request.address,
        "address_masked": request.address_masked,
        "note": request.note,
        "status": request.status,
        "received_at": request.received_at,
        "due_at": request.due_at,
        "extended_until": request.extended_until,
        "extension_reason": request.extension_reason,
        "requested_by": request.requested_by,
        "result": request.result,
        "completed_at": request.completed_at,
    }
    if events is not None:
        out["events"] = [
            {"at": e.at, "action": e.action, "actor": e.actor, "detail": e.detail} for e in events
        ]
    return out
