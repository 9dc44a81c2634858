"""Privacy: the purge — content destroyed at delivery, metadata kept only for its period.

Design note. The policy keeps content only to deliver and log it (§2c) and deletes it after
successful delivery (§5); metadata is kept for a limited period (§5). One purge run
(`purge_once`, every `purge_interval_s` in `amnex worker`, or `amnex purge [--dry-run]`):

1. **Content at a final status.** An outbound message `delivered`, `rejected` or `canceled`
   loses its subject, body and HTML at once, or `content_days` later where the account agreed
   (`content_purged_at` is set, the API shows `body: null`). A delivered one has usually lost
   them already: the write that makes it `delivered` empties them too
   (`empty_delivered_content`); this step covers the rest. One `failed` or `undelivered`
   keeps them for `failed_content_retention_s` (72 h: a client may look into what went
   wrong), then loses them too.
2. **Inbound text** is kept `inbound_content_retention_s` (30 days), then purged the same way.
3. **Metadata.** A message in a final status older than `metadata_retention_days` (365) is
   deleted with its events and parts. Ids are time-ordered, so the run looks only at the
   primary key's oldest range (`_old_enough_by_id`), however large the table has grown.
4. **Keys.** Every content key of a past period that no message's content is under any more
   is destroyed (`privacy.content.destroy_spent_keys`): whatever copy of that content
   survives in free pages, the WAL, dumps or backups can no longer be read.
5. **Subject-request exports** past their `expires_at` (`subject_export_ttl_days` after they
   were built) are deleted; a download after that is refused as before (`404 not_found`).
6. **Audit personal fields.** The `audit_personal` row of an entry older than
   `audit_personal_retention_days` (365) is deleted; the entry stays and its chain verifies.
7. **Audit entries** older than `audit_retention_days` (6 years) are deleted, per chain, oldest
   first, only ever a prefix of the chain: each chunk locks the chain's head row, deletes the
   oldest entries from the anchor on (with their personal fields) and moves the anchor to the
   newest one deleted, in one transaction (`privacy.audit`'s design note). The purge checks
   each entry it deletes against the chain (position, link, hash) and stops at the first that
   does not hold, so it never deletes the evidence of tampering; `verify_audit_chain` reports
   it. Chains with something due are found from the head rows: a chain's oldest entry is the
   one after its anchor, one index look-up each.
8. **The webhook delivery log**: attempts older than `webhook_log_retention_days` (30), and
   events as old that nothing is still owed for, with their deliveries.
9. **SQLite**: the WAL is checkpointed and truncated, so no old page image lingers in it;
   `secure_delete` zeroes freed space in the database file.

**Per account.** An account may have retention settings of its own
(`privacy.retention_settings`, within the operator's limits): content kept `content_days`
after its final status where the account agreed, its own failed/inbound windows and metadata
period. Each run groups the accounts: one pass covers every account without settings under
the operator's settings (`account_id NOT IN` the few with their own), then one pass per account
with settings, each a set-based condition on `messages` like the default one. Accounts with
settings are few (an operator sets them per agreement), so the list stays short.

Each step works in chunks of `purge_chunk` rows, one short transaction per chunk, so sends are
never blocked behind it, and a run stopped halfway resumes where it was on the next run (every
step selects by state, not by progress). Each run is recorded in `purge_runs` with its counts.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import String, and_, delete, func, or_, select, true, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from amnex.accounts.models import Account
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.base import Base
from amnex.db.engine import Database
from amnex.db.ids import id_floor, new_id
from amnex.db.lists import in_list
from amnex.messages.models import Message, MessageEvent, MessagePart
from amnex.messages.status import FINAL_STATUSES, Status
from amnex.metrics import count_purged
from amnex.privacy.audit import (
    AuditChainHead,
    AuditEntry,
    AuditPersonal,
    delete_audit_personal,
    entry_hash,
)
from amnex.privacy.content import destroy_spent_keys
from amnex.privacy.requests import SubjectRequestExport
from amnex.privacy.retention_settings import (
    EffectiveRetention,
    default_retention,
    effective_retention,
    retention_of,
)
from amnex.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEvent

log = logging.getLogger(__name__)

_AT_ONCE = (Status.DELIVERED.value, Status.REJECTED.value, Status.CANCELED.value)
_AFTER_WINDOW = (Status.FAILED.value, Status.UNDELIVERED.value)
_FINAL = tuple(s.value for s in FINAL_STATUSES)


class PurgeRun(Base):
    """What one purge run did (counts per step), kept as the record the policy asks for."""

    __tablename__ = "purge_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime]
    dry_run: Mapped[bool]
    counts: Mapped[dict[str, Any]]


@dataclass
class PurgeReport:
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    destroyed_keys: list[str] = field(default_factory=list)

    def add(self, step: str, n: int) -> None:
        self.counts[step] = self.counts.get(step, 0) + n


@dataclass(frozen=True, slots=True)
class _Group:
    """Messages of some accounts (`accounts`, a condition) under one retention."""

    accounts: Any
    retention: EffectiveRetention


def _content_due(retention: EffectiveRetention, now: datetime) -> Any:
    """Messages whose content is due for purging now, under `retention`."""
    at_final = and_(Message.direction == "outbound", Message.status.in_(_AT_ONCE))
    if retention.content:
        at_final = and_(at_final, Message.updated_at <= now - retention.content)
    return and_(
        Message.content_purged_at.is_(None),
        or_(
            at_final,
            and_(
                Message.direction == "outbound",
                Message.status.in_(_AFTER_WINDOW),
                Message.updated_at <= now - retention.failed_content,
            ),
            and_(
                Message.direction == "inbound",
                Message.created_at <= now - retention.inbound_content,
            ),
        ),
    )


def _metadata_due(retention: EffectiveRetention, now: datetime) -> Any:
    """Messages whose metadata is due for deletion now, under `retention`."""
    before = now - timedelta(days=retention.metadata_days)
    return and_(Message.created_at <= before, Message.status.in_(_FINAL))


# Between stamping a message's id and its `created_at` (the same request), with room to spare.
_ID_CLOCK_MARGIN = timedelta(minutes=1)


def _old_enough_by_id(retention: EffectiveRetention, now: datetime) -> Any:
    """The messages whose ids say they may be past the metadata period: ids are time-ordered
    (`db.ids`), so this is a range of the primary key — the oldest rows — and the metadata step
    reads that range, not the whole table, every run. `_metadata_due` still decides."""
    before = now - timedelta(days=retention.metadata_days) + _ID_CLOCK_MARGIN
    return Message.id < id_floor("msg", before)


def _has_retention_settings(settings: Settings) -> Any:
    """Accounts whose settings hold a `retention` key (a missing key is SQL NULL)."""
    if settings.is_sqlite:
        return func.json_type(Account.settings, "$.retention").is_not(None)
    return Account.settings["retention"].as_json().is_not(None)


async def _groups(session: AsyncSession, settings: Settings) -> list[_Group]:
    """Every account without retention settings in one group, then one per account with."""
    own = await account_retentions(session, settings)
    others = Message.account_id.not_in(list(own)) if own else true()
    return [
        _Group(others, default_retention(settings)),
        *(_Group(Message.account_id == account_id, r) for account_id, r in sorted(own.items())),
    ]


async def due_conditions(
    session: AsyncSession, settings: Settings, now: datetime
) -> tuple[Any, Any]:
    """(content due, metadata due): one condition each on `messages` over every account,
    each account under its own retention — what a purge would remove now (for reports)."""
    groups = await _groups(session, settings)
    return (
        or_(*(and_(g.accounts, _content_due(g.retention, now)) for g in groups)),
        or_(*(and_(g.accounts, _metadata_due(g.retention, now)) for g in groups)),
    )


async def account_retentions(
    session: AsyncSession, settings: Settings
) -> dict[str, EffectiveRetention]:
    """The retention of each account with settings of its own (the others get
    `default_retention(settings)`)."""
    rows = (
        await session.execute(
            select(Account.id, Account.settings).where(_has_retention_settings(settings))
        )
    ).all()
    return {
        account_id: effective_retention(retention_of(account_settings or {}), settings)
        for account_id, account_settings in rows
    }


async def purge_once(
    db: Database, settings: Settings, *, now: datetime | None = None, dry_run: bool = False
) -> PurgeReport:
    """One purge run (see the module docstring); with `dry_run`, count and change nothing."""
    now = now or utc_now()
    started = utc_now()
    report = PurgeReport(dry_run=dry_run)
    chunk = settings.purge_chunk
    async with db.read_session() as session:
        groups = await _groups(session, settings)
    content_due = [and_(g.accounts, _content_due(g.retention, now)) for g in groups]
    metadata_due = [
        and_(g.accounts, _old_enough_by_id(g.retention, now), _metadata_due(g.retention, now))
        for g in groups
    ]
    exports_before = now
    personal_before = now - timedelta(days=settings.audit_personal_retention_days)
    entries_before = now - timedelta(days=settings.audit_retention_days)
    webhooks_before = now - timedelta(days=settings.webhook_log_retention_days)
    if dry_run:
        async with db.read_session() as session:
            for condition in content_due:
                report.add("content", await _count(session, condition))
            for condition in metadata_due:
                report.add("metadata", await _count(session, condition))
            report.add("exports", await _count_exports(session, exports_before))
            report.add("audit_personal", await _count_audit_personal(session, personal_before))
            report.add("audit_entries", await _count_audit_entries(session, entries_before))
            report.add("webhook_log", await _count_webhook_log(session, webhooks_before))
        return report

    for condition in content_due:
        while True:
            purged = await db.write(
                partial(_purge_content, condition=condition, now=now, chunk=chunk)
            )
            report.add("content", purged)
            if purged < chunk:
                break
    for condition in metadata_due:
        while True:
            deleted = await db.write(partial(_delete_metadata, condition=condition, chunk=chunk))
            report.add("metadata", deleted)
            if deleted < chunk:
                break
    report.add(
        "exports",
        await _in_chunks(db, partial(_delete_exports, before=exports_before, chunk=chunk), chunk),
    )
    report.add(
        "audit_personal",
        await _in_chunks(
            db, partial(_delete_audit_personal, before=personal_before, chunk=chunk), chunk
        ),
    )
    async with db.read_session() as session:
        chains = await _chains_with_entries_before(session, entries_before)
    report.add("audit_entries", 0)
    for chain in chains:
        report.add(
            "audit_entries",
            await _in_chunks(
                db,
                partial(_delete_audit_entries, chain=chain, before=entries_before, chunk=chunk),
                chunk,
            ),
        )
    report.add(
        "webhook_log",
        await _in_chunks(
            db, partial(_delete_webhook_log, before=webhooks_before, chunk=chunk), chunk
        ),
    )
    report.destroyed_keys = await destroy_spent_keys(
        db, now=now, period_s=settings.content_key_period_s
    )
    report.add("keys_destroyed", len(report.destroyed_keys))
    if db.is_sqlite and any(n for step, n in report.counts.items() if step != "keys_destroyed"):
        await truncate_wal(db)
    async with db.unit_of_work() as session:
        session.add(
            PurgeRun(
                id=new_id("prg"),
                started_at=started,
                finished_at=utc_now(),
                dry_run=False,
                counts=dict(report.counts),
            )
        )
    count_purged(report.counts)
    if any(report.counts.values()):
        log.info("purge: %s", report.counts)
    return report


def content_destroyed(now: datetime) -> dict[str, Any]:
    """The columns of a message whose content is destroyed at `now`."""
    return {"subject": None, "body": None, "html": None, "content_purged_at": now}


async def accounts_keeping_content(session: AsyncSession, account_ids: Iterable[str]) -> set[str]:
    """Of these accounts, those that agreed to keep content after delivery (`content_days`).

    The writers that make a message `delivered` destroy the content of every other account's
    message in that same UPDATE (`content_destroyed`), so it does not outlive the delivery by
    up to a purge interval and is not written a second time; the purge (step 1) still covers
    whatever reached a final status another way. A kept period is judged here without the
    operator's cap: at worst the purge, which applies the cap, destroys it a minute later.
    """
    ids = sorted(set(account_ids))
    if not ids:
        return set()
    rows = await session.execute(
        select(Account.id, Account.settings).where(in_list(session, Account.id, ids))
    )
    return {
        account_id
        for account_id, account_settings in rows
        if retention_of(account_settings or {}).content_days > 0
    }


async def empty_delivered_content(
    session: AsyncSession,
    changes: list[dict[str, Any]],
    account_of: Mapping[str, str],
    now: datetime,
) -> None:
    """Add `content_destroyed(now)` to each change that makes a message `delivered` (`id` ->
    its account in `account_of`), unless its account keeps content: content is destroyed at
    delivery, in that same UPDATE (policy §5). Counted as the purge's `content` step."""
    keeping = await accounts_keeping_content(session, (account_of[c["id"]] for c in changes))
    destroyed = content_destroyed(now)
    emptied = 0
    for change in changes:
        if account_of[change["id"]] not in keeping:
            change.update(destroyed)
            emptied += 1
    count_purged({"content": emptied})


async def _count(session: AsyncSession, condition: Any) -> int:
    return int(
        await session.scalar(select(func.count()).select_from(Message).where(condition)) or 0
    )


async def _purge_content(session: AsyncSession, condition: Any, now: datetime, chunk: int) -> int:
    ids = list(await session.scalars(select(Message.id).where(condition).limit(chunk)))
    if ids:
        await session.execute(
            update(Message).where(Message.id.in_(ids)).values(**content_destroyed(now))
        )
    return len(ids)


async def _delete_metadata(session: AsyncSession, condition: Any, chunk: int) -> int:
    ids = list(await session.scalars(select(Message.id).where(condition).limit(chunk)))
    if ids:
        await session.execute(delete(MessageEvent).where(MessageEvent.message_id.in_(ids)))
        await session.execute(delete(MessagePart).where(MessagePart.message_id.in_(ids)))
        await session.execute(delete(Message).where(Message.id.in_(ids)))
    return len(ids)


async def _in_chunks(
    db: Database, work: Callable[[AsyncSession], Awaitable[int]], chunk: int
) -> int:
    """Run `work` (one chunk, one transaction) until it does less than a full chunk."""
    total = 0
    while True:
        done = await db.write(work)
        total += done
        if done < chunk:
            return total


def _webhook_log_due(before: datetime) -> Any:
    return WebhookAttempt.at < before


def _webhook_events_due(before: datetime) -> Any:
    """Events older than the log's retention that nothing is still owed for."""
    owed = select(WebhookDelivery.id).where(
        WebhookDelivery.event_id == WebhookEvent.id,
        WebhookDelivery.status.in_(("pending", "delivering")),
    )
    return and_(WebhookEvent.created_at < before, ~owed.exists())


async def _count_webhook_log(session: AsyncSession, before: datetime) -> int:
    attempts = await session.scalar(
        select(func.count()).select_from(WebhookAttempt).where(_webhook_log_due(before))
    )
    events = await session.scalar(
        select(func.count()).select_from(WebhookEvent).where(_webhook_events_due(before))
    )
    return int(attempts or 0) + int(events or 0)


async def _delete_webhook_log(session: AsyncSession, before: datetime, chunk: int) -> int:
    """The delivery log past its retention: attempts, then events nothing is owed for (their
    deliveries go with them); counts attempts and events."""
    attempts = list(
        await session.scalars(
            select(WebhookAttempt.id).where(_webhook_log_due(before)).limit(chunk)
        )
    )
    if attempts:
        await session.execute(delete(WebhookAttempt).where(WebhookAttempt.id.in_(attempts)))
    events = list(
        await session.scalars(
            select(WebhookEvent.id).where(_webhook_events_due(before)).limit(chunk)
        )
    )
    if events:
        await session.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(events)))
        await session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(events)))
    return len(attempts) + len(events)


async def _count_exports(session: AsyncSession, before: datetime) -> int:
    return int(
        await session.scalar(select(func.count()).where(SubjectRequestExport.expires_at <= before))
        or 0
    )


async def _delete_exports(session: AsyncSession, before: datetime, chunk: int) -> int:
    ids = list(
        await session.scalars(
            select(SubjectRequestExport.request_id)
            .where(SubjectRequestExport.expires_at <= before)
            .limit(chunk)
        )
    )
    if ids:
        await session.execute(
            delete(SubjectRequestExport).where(SubjectRequestExport.request_id.in_(ids))
        )
    return len(ids)


def _personal_before(before: datetime) -> Any:
    return (
        select(AuditPersonal.entry_id)
        .join(AuditEntry, AuditEntry.id == AuditPersonal.entry_id)
        .where(AuditEntry.at < before)
    )


async def _count_audit_personal(session: AsyncSession, before: datetime) -> int:
    due = _personal_before(before).subquery()
    return int(await session.scalar(select(func.count()).select_from(due)) or 0)


async def _delete_audit_personal(session: AsyncSession, before: datetime, chunk: int) -> int:
    ids = list(await session.scalars(_personal_before(before).limit(chunk)))
    if ids:
        await delete_audit_personal(session, entry_ids=ids)
    return len(ids)


async def _count_audit_entries(session: AsyncSession, before: datetime) -> int:
    return int(await session.scalar(select(func.count()).where(AuditEntry.at < before)) or 0)


async def _chains_with_entries_before(session: AsyncSession, before: datetime) -> list[str]:
    """Chains whose oldest entry (the one after the anchor) is older than `before`."""
    rows = await session.scalars(
        select(AuditChainHead.chain)
        .join(
            AuditEntry,
            and_(
                AuditEntry.chain == AuditChainHead.chain,
                AuditEntry.seq == AuditChainHead.anchor_seq + 1,
            ),
        )
        .where(AuditEntry.at < before)
        .order_by(AuditChainHead.chain)
    )
    return list(rows)


async def _delete_audit_entries(
    session: AsyncSession, chain: str, before: datetime, chunk: int
) -> int:
    """Delete up to `chunk` of the chain's oldest entries older than `before`, and move its
    anchor to the newest one deleted (see the module docstring). The head row is locked
    first, so two purges, or a purge and an append, take turns on the chain."""
    head = await session.get(AuditChainHead, chain, with_for_update=True)
    if head is None:
        return 0
    rows = await session.scalars(
        select(AuditEntry)
        .where(AuditEntry.chain == chain, AuditEntry.seq > head.anchor_seq)
        .order_by(AuditEntry.seq)
        .limit(chunk)
    )
    seq, prev = head.anchor_seq, head.anchor_hash
    ids: list[str] = []
    for entry in rows:
        if entry.at >= before:
            break
        if entry.seq != seq + 1 or entry.prev_hash != prev or entry_hash(entry) != entry.hash:
            # Tampered with: keep it for `verify_audit_chain` to report, and stop here.
            log.warning(
                "purge: audit chain %s does not verify at %s; not deleting", chain, entry.id
            )
            break
        ids.append(entry.id)
        seq, prev = entry.seq, entry.hash
    if ids:
        await delete_audit_personal(session, entry_ids=ids)
        await session.execute(
            delete(AuditEntry)
            .where(AuditEntry.id.in_(ids))
            .execution_options(synchronize_session=False)
        )
        head.anchor_seq, head.anchor_hash = seq, prev
    return len(ids)


async def truncate_wal(db: Database) -> None:
    """Copy the WAL into the database file and empty it (a busy reader defers that to the
    next run: SQLite then reports the checkpoint incomplete, which is not an error)."""
    path = make_url(db.url).database
    if not path or path == ":memory:":
        return
    timeout_s = db.settings.sqlite_busy_timeout_ms / 1000

    def checkpoint() -> None:
        conn = sqlite3.connect(path, timeout=timeout_s)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()

    await asyncio.to_thread(checkpoint)
