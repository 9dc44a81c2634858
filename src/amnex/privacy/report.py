"""Privacy: the attestation — what the live data says about the privacy promises, now.

Design note. Every figure is counted from the database at the moment of the report, never
taken from what a process believes: content stored unencrypted is counted on the raw columns
(`type_coerce(..., Text)`, so the encrypted column type neither encrypts the pattern nor
decrypts the rows), content and metadata past retention with the very conditions the purge
uses, each account under its own retention (`retention.due_conditions`), the purges from
`purge_runs`, and the oldest audit entry against the audit retention. What is wrong becomes a
plain sentence in `findings`; what the report cannot cover yet is listed in `not_covered` with
the reason, rather than shown as a reassuring zero.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Text, and_, case, func, not_, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.models import Account
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.messages.models import Message
from amnex.privacy.audit import AuditChainHead, AuditEntry
from amnex.privacy.content import PREFIX, ContentKey
from amnex.privacy.keys import PREFIX as ADDRESS_PREFIX
from amnex.privacy.keys import DataKey
from amnex.privacy.records import RecordsFile, missing_fields
from amnex.privacy.requests import OPEN_STATUSES, SubjectRequest
from amnex.privacy.retention import PurgeRun, account_retentions, due_conditions
from amnex.privacy.retention_settings import default_retention


class Encryption(BaseModel):
    master_key_configured: bool
    content_keys_live: int
    content_keys_destroyed: int
    unencrypted_messages: int
    # Address data keys: one per account (and the platform's); destroyed ones were closed.
    data_keys_live: int = 0
    data_keys_destroyed: int = 0
    # Messages whose recipient's address is stored in clear (a database without a key).
    unsealed_addresses: int = 0


class AccountMetadata(BaseModel):
    account_id: str
    business_name: str | None
    oldest_message_at: datetime
    oldest_age_days: int
    retention_days: int
    messages_past_retention: int


class PurgeTotals(BaseModel):
    runs: int
    counts: dict[str, int]


class Purges(BaseModel):
    last_run_at: datetime | None
    last_24h: PurgeTotals
    last_30d: PurgeTotals


class RecordsStatus(BaseModel):
    configured: bool
    missing: list[str]


class NotCovered(BaseModel):
    section: str
    reason: str


class SubjectRequests(BaseModel):
    """Open data-subject requests and their deadlines (a month, extendable once)."""

    open: int
    overdue: int
    next_due_at: datetime | None


class AuditRetention(BaseModel):
    """How long audit entries and their personal fields are kept, and the oldest entry."""

    retention_days: int
    personal_retention_days: int
    oldest_entry_at: datetime | None
    oldest_age_days: int | None


class PrivacyReport(BaseModel):
    generated_at: datetime
    findings: list[str]
    encryption: Encryption
    content_past_retention: int
    metadata: list[AccountMetadata]
    purges: Purges
    records: RecordsStatus
    subject_requests: SubjectRequests
    audit: AuditRetention
    not_covered: list[NotCovered]


NOT_COVERED: tuple[NotCovered, ...] = ()


async def _subject_requests(session: AsyncSession, now: datetime) -> SubjectRequests:
    deadline = func.coalesce(SubjectRequest.extended_until, SubjectRequest.due_at)
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(deadline < now),
                func.min(deadline),
            ).where(SubjectRequest.status.in_(OPEN_STATUSES))
        )
    ).one()
    return SubjectRequests(open=int(row[0]), overdue=int(row[1]), next_due_at=row[2])


async def _audit(session: AsyncSession, settings: Settings, now: datetime) -> AuditRetention:
    # Each chain's oldest entry is the one after its anchor: one index look-up per chain.
    oldest = await session.scalar(
        select(func.min(AuditEntry.at)).join(
            AuditChainHead,
            and_(
                AuditEntry.chain == AuditChainHead.chain,
                AuditEntry.seq == AuditChainHead.anchor_seq + 1,
            ),
        )
    )
    return AuditRetention(
        retention_days=settings.audit_retention_days,
        personal_retention_days=settings.audit_personal_retention_days,
        oldest_entry_at=oldest,
        oldest_age_days=None if oldest is None else max(0, (now - oldest).days),
    )


async def build_report(
    session: AsyncSession,
    settings: Settings,
    operator_file: RecordsFile | None,
    *,
    now: datetime | None = None,
) -> PrivacyReport:
    """The attestation, from the live data (read only)."""
    now = now or utc_now()
    encryption = await _encryption(session, settings)
    # The purge's own conditions, per account retention: counted here is what a purge takes.
    content_due, metadata_due = await due_conditions(session, settings, now)
    past_retention = await _count(session, content_due)
    metadata = await _metadata(session, settings, metadata_due, now)
    purges = await _purges(session, now)
    missing = missing_fields(operator_file)
    report = PrivacyReport(
        generated_at=now,
        findings=[],
        encryption=encryption,
        content_past_retention=past_retention,
        metadata=metadata,
        purges=purges,
        records=RecordsStatus(configured=not missing, missing=missing),
        subject_requests=await _subject_requests(session, now),
        audit=await _audit(session, settings, now),
        not_covered=list(NOT_COVERED),
    )
    report.findings = findings(report)
    return report


def findings(report: PrivacyReport) -> list[str]:
    """Every problem the figures show, as a sentence an operator can act on."""
    found: list[str] = []
    if not report.encryption.master_key_configured:
        found.append("no master key: content is stored unencrypted")
    if report.encryption.unsealed_addresses:
        found.append(
            f"{report.encryption.unsealed_addresses} messages hold their recipient's address "
            "in clear"
        )
    if report.encryption.unencrypted_messages:
        found.append(
            f"{report.encryption.unencrypted_messages} messages hold content stored unencrypted"
        )
    if report.content_past_retention:
        found.append(
            f"{report.content_past_retention} messages hold content past retention "
            "(run `amnex purge`; is `amnex worker` running?)"
        )
    for account in report.metadata:
        if account.messages_past_retention:
            found.append(
                f"account {account.account_id} holds {account.messages_past_retention} "
                f"messages past the {account.retention_days}-day metadata retention "
                f"(oldest {account.oldest_age_days} days)"
            )
    if report.purges.last_24h.runs == 0:
        found.append("no purge ran in the last 24 hours (is `amnex worker` running?)")
    found.extend(f"{field.replace('_', ' ')} not configured" for field in report.records.missing)
    audit = report.audit
    if audit.oldest_age_days is not None and audit.oldest_age_days > audit.retention_days:
        found.append(
            f"the oldest audit entry is {audit.oldest_age_days} days old, past the "
            f"{audit.retention_days}-day audit retention (is `amnex worker` running?)"
        )
    if report.subject_requests.overdue:
        found.append(
            f"{report.subject_requests.overdue} data-subject requests are past their deadline"
        )
    return found


async def _count(session: AsyncSession, condition: Any) -> int:
    return int(
        await session.scalar(select(func.count()).select_from(Message).where(condition)) or 0
    )


def _stored_in_clear() -> Any:
    """Content not purged whose stored form lacks the `amx1:` prefix of encrypted text."""
    columns = [type_coerce(c, Text) for c in (Message.body, Message.subject, Message.html)]
    return and_(
        Message.content_purged_at.is_(None),
        or_(*(and_(c.is_not(None), not_(c.startswith(PREFIX, autoescape=True))) for c in columns)),
    )


def _address_in_clear() -> Any:
    """The recipient's side of a message stored without the `amxa1:` prefix of a sealed
    address (and not erased)."""
    person = case((Message.direction == "inbound", Message.from_addr), else_=Message.to_addr)
    return and_(not_(person.startswith(ADDRESS_PREFIX, autoescape=True)), person != "[erased]")


async def _encryption(session: AsyncSession, settings: Settings) -> Encryption:
    live, destroyed = (
        await session.execute(
            select(
                func.count(ContentKey.id).filter(ContentKey.wrapped.is_not(None)),
                func.count(ContentKey.id).filter(ContentKey.wrapped.is_(None)),
            )
        )
    ).one()
    keys_live, keys_destroyed = (
        await session.execute(
            select(
                func.count(DataKey.id).filter(DataKey.wrapped.is_not(None)),
                func.count(DataKey.id).filter(DataKey.wrapped.is_(None)),
            ).where(DataKey.purpose == "address")
        )
    ).one()
    return Encryption(
        master_key_configured=settings.master_key is not None
        or settings.master_key_file is not None,
        content_keys_live=int(live or 0),
        content_keys_destroyed=int(destroyed or 0),
        unencrypted_messages=await _count(session, _stored_in_clear()),
        data_keys_live=int(keys_live or 0),
        data_keys_destroyed=int(keys_destroyed or 0),
        unsealed_addresses=await _count(session, _address_in_clear()),
    )


async def _metadata(
    session: AsyncSession, settings: Settings, metadata_due: Any, now: datetime
) -> list[AccountMetadata]:
    """Per account: its oldest message, its retention, and how many messages are past it."""
    own = await account_retentions(session, settings)
    default_days = default_retention(settings).metadata_days
    rows = (
        await session.execute(
            select(
                Message.account_id,
                Account.business_name,
                func.min(Message.created_at),
                func.sum(case((metadata_due, 1), else_=0)),
            )
            .outerjoin(Account, Account.id == Message.account_id)
            .group_by(Message.account_id, Account.business_name)
            .order_by(Message.account_id)
        )
    ).all()
    return [
        AccountMetadata(
            account_id=account_id,
            business_name=name,
            oldest_message_at=oldest,
            oldest_age_days=max(0, (now - oldest).days),
            retention_days=own[account_id].metadata_days if account_id in own else default_days,
            messages_past_retention=int(past or 0),
        )
        for account_id, name, oldest, past in rows
    ]


async def _purges(session: AsyncSession, now: datetime) -> Purges:
    # A worker runs the purge every minute: about 43 000 small rows a month, read once here.
    rows = (
        await session.execute(
            select(PurgeRun.started_at, PurgeRun.counts).where(
                PurgeRun.dry_run.is_(False), PurgeRun.started_at >= now - timedelta(days=30)
            )
        )
    ).all()
    last = await session.scalar(
        select(func.max(PurgeRun.started_at)).where(PurgeRun.dry_run.is_(False))
    )
    return Purges(
        last_run_at=last,
        last_24h=_totals(r.counts for r in rows if r.started_at >= now - timedelta(hours=24)),
        last_30d=_totals(r.counts for r in rows),
    )


def _totals(runs: Any) -> PurgeTotals:
    counts: dict[str, int] = {}
    n = 0
    for run in runs:
        n += 1
        for step, value in run.items():
            counts[step] = counts.get(step, 0) + int(value)
    return PurgeTotals(runs=n, counts=counts)


def render_text(report: PrivacyReport) -> str:
    """The report for people (`amnex privacy report`)."""
    enc = report.encryption
    lines = [
        f"privacy report at {report.generated_at.isoformat()}",
        "",
        "encryption",
        f"  master key configured: {'yes' if enc.master_key_configured else 'NO'}",
        f"  content keys: {enc.content_keys_live} live, {enc.content_keys_destroyed} destroyed",
        f"  messages with content stored unencrypted: {enc.unencrypted_messages}",
        f"  address keys: {enc.data_keys_live} live, {enc.data_keys_destroyed} destroyed "
        "(closed accounts)",
        f"  messages with the recipient's address in clear: {enc.unsealed_addresses}",
        "",
        f"content past retention: {report.content_past_retention} (must be 0)",
        "",
        "metadata (oldest message per account, against its retention)",
    ]
    lines += [
        f"  {a.account_id} {a.business_name or ''}: oldest {a.oldest_age_days} days of "
        f"{a.retention_days}; past retention: {a.messages_past_retention}"
        for a in report.metadata
    ] or ["  no messages"]
    purges = report.purges
    last = purges.last_run_at.isoformat() if purges.last_run_at else "never"
    lines += [
        "",
        f"purges (last run: {last})",
        f"  last 24 h: {_totals_text(purges.last_24h)}",
        f"  last 30 days: {_totals_text(purges.last_30d)}",
        "",
        "records of processing: "
        + (
            "configured"
            if report.records.configured
            else "missing " + ", ".join(report.records.missing)
        ),
        "",
        "subject requests: "
        + f"{report.subject_requests.open} open, {report.subject_requests.overdue} overdue"
        + (
            f", next due {report.subject_requests.next_due_at.isoformat()}"
            if report.subject_requests.next_due_at
            else ""
        ),
    ]
    audit = report.audit
    lines += [
        "",
        f"audit log: entries kept {audit.retention_days} days, personal fields "
        f"{audit.personal_retention_days}; oldest entry "
        + ("none" if audit.oldest_age_days is None else f"{audit.oldest_age_days} days old"),
    ]
    if report.not_covered:
        lines += ["", "not covered"]
        lines += [f"  {n.section}: {n.reason}" for n in report.not_covered]
    lines += ["", "findings"]
    lines += [f"  - {f}" for f in report.findings] or ["  none"]
    return "\n".join(lines)


def _totals_text(totals: PurgeTotals) -> str:
    counts = ", ".join(f"{step} {n}" for step, n in sorted(totals.counts.items()))
    return f"{totals.runs} runs" + (f" ({counts})" if counts else "")
