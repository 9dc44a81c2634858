"""Dispatch: claiming due messages under a lease, and recording what became of them.

Design note. The message row is its own job (`status`, `next_attempt_at`, `attempts`,
`lease_owner`, `lease_until`). A claim selects due rows — queued or scheduled whose time has
come, or `sending` rows whose lease expired (the claim sets `next_attempt_at` to the lease's
end, so one index serves both) — with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent
workers never take the same row; SQLite has one writer and takes its lock at `BEGIN
IMMEDIATE`. The claim and its `sending` events commit together.

The claim runs the compliance gate's rules that can change after accept (`gate.recheck`:
suppression, consent, quiet hours) on what it takes, with one read of opt-outs and
consents for the whole claim: a message whose recipient opted out meanwhile becomes
`rejected` with the rule's code, a marketing SMS outside the recipient's hours goes back to
`scheduled` until they open. Amnex's own keyword replies (`origin`) skip it: a STOP is
confirmed to the number that just opted out.

A worker may be unable to send some messages at all: with bind leases it may hold no bind of
any connector on an SMS's route. The claim asks the worker (`can_attempt`) and passes such a
message over, untouched and unlocked once the claim commits, so it goes to a worker that
can send it rather than waiting behind one that cannot. A claim that passed messages over
looks further down the queue, a few batches deep at most (`CLAIM_ROUNDS`), so a backlog for
a connector this worker has no bind of does not starve it of the messages it can send. A
message claimed anyway (the binds moved between the claim and the send) is given back untried
(`record_not_attempted`): queued and due at once, its attempt not counted, with a `queued`
event saying why (`{"reason": "no_bind_here"}`).

Recording an outcome re-reads the row under a lock and applies it only if this worker still
holds the lease: a worker that lost its lease (it stalled, another worker reclaimed the row)
cannot overwrite the newer attempt. Every recording is safe to run twice. Transactions that
lock several message rows lock them in id order (outcome groups, receipts), or skip what
another holds (claims, lease renewal), so none waits for another in a circle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.models import Account
from amnex.channels.base import OutboundMessage
from amnex.compliance.gate import Candidate, recheck
from amnex.compliance.policy import AccountCompliance, account_compliance
from amnex.compliance.verdict import Allow, Defer, Reject
from amnex.db.bulk import insert_rows, update_rows
from amnex.db.lists import in_list, not_in_list
from amnex.db.reads import KeyedRead
from amnex.messages.models import Message, MessageEvent, MessagePart
from amnex.messages.service import event_row, transition
from amnex.messages.status import CLAIMABLE_STATUSES, Status, check_transition
from amnex.privacy.keys import blind_index, load_keys, open_address
from amnex.privacy.retention import empty_delivered_content
from amnex.receipts.apply import apply_pending_for_parts, part_rows, receipt_deadline
from amnex.recipients.facts import FactsQuery, facts_session

# record_submitted / record_failed / record_retry / record_not_attempted, called with the
# session and keywords.
Recorder = Callable[..., Awaitable[bool]]
# Whether this worker can send a message at all: (channel, account id, recipient) -> bool.
CanAttempt = Callable[[str, str, str], bool]
# How many batches deep a claim looks when it passes messages over (see the design note).
CLAIM_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    outbound: OutboundMessage
    expires_at: datetime | None


_CLAIM_COLUMNS = (
    Message.id,
    Message.account_id,
    Message.channel,
    Message.from_addr,
    Message.to_addr,
    Message.peer_index,
    Message.subject,
    Message.body,
    Message.html,
    Message.category,
    Message.created_at,
    Message.meta,
    Message.status,
    Message.expires_at,
    Message.attempts,
    Message.lease_owner,
    Message.event_seq,
    Message.origin,
)
EXPIRED_TEXT = "the validity period ended before the message could be sent"


async def claim_due_messages(
    session: AsyncSession,
    *,
    owner: str,
    limit: int,
    lease_s: float,
    now: datetime,
    can_attempt: CanAttempt | None = None,
    skip_ids: Collection[str] = (),
    exclude_connectors: Collection[str] = (),
) -> list[ClaimedMessage]:
    """Take up to `limit` due messages under a lease held by `owner`; expired ones fail here.

    Messages `can_attempt` says this worker cannot send, and those in `skip_ids`, are passed
    over (left as they are); messages routed at accept to a connector in
    `exclude_connectors` are not even read (another worker sends them), so a backlog for a
    connector this worker cannot reach never stands between it and what it can send. One
    SELECT, one UPDATE per kind of change (executemany) and one INSERT of the events: a claim
    of hundreds of messages is a handful of statements.
    """
    rows, recipients = await _due_rows(
        session,
        limit=limit,
        now=now,
        can_attempt=can_attempt,
        skip_ids=skip_ids,
        exclude_connectors=exclude_connectors,
    )
    lease_until = now + timedelta(seconds=lease_s)
    claimed: list[ClaimedMessage] = []
    leased: list[dict[str, Any]] = []
    expired: list[dict[str, Any]] = []
    stopped: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    verdicts = await _recheck(session, rows, recipients, now=now)
    for row in rows:
        previous = Status(row.status)
        seq = row.event_seq
        status = previous
        verdict = verdicts.get(row.id)
        if verdict is not None and not (row.expires_at is not None and row.expires_at <= now):
            stopped.append(_stopped(row, verdict, now, events))
            continue
        if previous is Status.SCHEDULED:
            check_transition(status, Status.QUEUED)
            seq, status = seq + 1, Status.QUEUED
            events.append(
                event_row(row.id, row.account_id, seq, status, at=now, detail={"reason": "send_at"})
            )
        if row.expires_at is not None and row.expires_at <= now:
            check_transition(status, Status.FAILED)
            seq += 1
            events.append(
                event_row(
                    row.id,
                    row.account_id,
                    seq,
                    Status.FAILED,
                    at=now,
                    error_code="expired",
                    detail={"error_message": EXPIRED_TEXT, "provider_error_code": None},
                )
            )
            expired.append(
                {
                    "id": row.id,
                    "status": Status.FAILED.value,
                    "event_seq": seq,
                    "updated_at": now,
                    "error_code": "expired",
                    "error_message": EXPIRED_TEXT,
                    "provider_error_code": None,
                    "failed_at": now,
                    "next_attempt_at": None,
                    "lease_owner": None,
                    "lease_until": None,
                }
            )
            continue
        check_transition(status, Status.SENDING)
        detail: dict[str, Any] = {"attempt": row.attempts + 1, "worker": owner}
        if previous is Status.SENDING:
            detail["reclaimed_from"] = row.lease_owner
        seq += 1
        events.append(event_row(row.id, row.account_id, seq, Status.SENDING, at=now, detail=detail))
        leased.append(
            {
                "id": row.id,
                "status": Status.SENDING.value,
                "event_seq": seq,
                "updated_at": now,
                "attempts": row.attempts + 1,
                "lease_owner": owner,
                "lease_until": lease_until,
                "next_attempt_at": lease_until,
            }
        )
        claimed.append(
            ClaimedMessage(
                outbound=OutboundMessage(
                    id=row.id,
                    account_id=row.account_id,
                    channel=row.channel,
                    from_addr=row.from_addr,
                    to_addr=recipients[row.id],
                    subject=row.subject,
                    body=row.body,
                    html=row.html,
                    category=row.category,
                    created_at=row.created_at,
                    attempt=row.attempts + 1,
                    metadata=dict(row.meta or {}),
                    expires_at=row.expires_at,
                ),
                expires_at=row.expires_at,
            )
        )
    for changes in (leased, expired, *_by_columns(stopped)):
        if changes:
            await update_rows(session, Message, changes, key=("id",))
    if events:
        await insert_rows(session, MessageEvent, events)
    return claimed


async def _due_rows(
    session: AsyncSession,
    *,
    limit: int,
    now: datetime,
    can_attempt: CanAttempt | None,
    skip_ids: Collection[str],
    exclude_connectors: Collection[str] = (),
) -> tuple[list[Any], dict[str, str]]:
    """Up to `limit` due rows, locked, that this worker can send (or must settle: an expired
    one fails wherever it is claimed), oldest first; and their recipients in clear."""
    due = (
        select(*_CLAIM_COLUMNS)
        .where(
            Message.status.in_([s.value for s in CLAIMABLE_STATUSES]),
            Message.next_attempt_at <= now,
        )
        .order_by(Message.next_attempt_at)
        .with_for_update(skip_locked=True)
    )
    if exclude_connectors:
        due = due.where(
            or_(
                Message.connector_id.is_(None),
                Message.connector_id.not_in(sorted(exclude_connectors)),
            )
        )
    taken: list[Any] = []
    recipients: dict[str, str] = {}
    # Rows a claim locked stay visible to its own next SELECT: exclude them by id.
    excluded = set(skip_ids)
    for _ in range(CLAIM_ROUNDS if can_attempt is not None else 1):
        wanted = limit - len(taken)
        query = due.limit(wanted)
        if excluded:
            query = query.where(not_in_list(session, Message.id, sorted(excluded)))
        rows = (await session.execute(query)).all()
        await load_keys({row.account_id for row in rows})
        passed_over = False
        for row in rows:
            to = open_address(row.to_addr) or ""
            excluded.add(row.id)
            if (
                can_attempt is None
                or (row.expires_at is not None and row.expires_at <= now)
                or can_attempt(row.channel, row.account_id, to)
            ):
                taken.append(row)
                recipients[row.id] = to
            else:
                passed_over = True
        if not passed_over or len(rows) < wanted:
            break
    return taken, recipients


def _by_columns(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return list(groups.values())


async def _account_rules(
    session: AsyncSession, account_ids: set[str]
) -> dict[str, AccountCompliance]:
    rows = await session.execute(
        select(Account.id, Account.country, Account.business_name, Account.settings).where(
            in_list(session, Account.id, sorted(account_ids))
        )
    )
    return {
        row.id: account_compliance(
            row.id, country=row.country, business_name=row.business_name, settings=row.settings
        )
        for row in rows
    }


async def _recheck(
    session: AsyncSession, rows: Sequence[Any], recipients: dict[str, str], *, now: datetime
) -> dict[str, Defer | Reject]:
    """The gate's verdict for each claimed message it stops or defers (absent: it may go)."""
    checked = [row for row in rows if row.origin is None]
    if not checked:
        return {}
    accounts = await _account_rules(session, {row.account_id for row in checked})
    checked = [row for row in checked if row.account_id in accounts]
    asks = [
        FactsQuery(
            account_id=row.account_id,
            channel=row.channel,
            address_index=row.peer_index or blind_index(recipients[row.id]),
            consent=row.category == "marketing"
            and accounts[row.account_id].settings.require_marketing_consent,
        )
        for row in checked
    ]
    out: dict[str, Defer | Reject] = {}
    for row, facts in zip(checked, await facts_session(session, asks), strict=True):
        candidate = Candidate(row.channel, recipients[row.id], row.category, None)
        verdict = recheck(candidate, accounts[row.account_id], facts, now=now)
        if not isinstance(verdict, Allow):
            out[row.id] = verdict
    return out


def _stopped(
    row: Any, verdict: Defer | Reject, now: datetime, events: list[dict[str, Any]]
) -> dict[str, Any]:
    """The change and event for a claimed message the gate rejects or defers."""
    seq = row.event_seq + 1
    done = {"lease_owner": None, "lease_until": None}
    if isinstance(verdict, Defer):
        check_transition(Status(row.status), Status.SCHEDULED)
        events.append(
            event_row(
                row.id,
                row.account_id,
                seq,
                Status.SCHEDULED,
                at=now,
                detail={
                    "send_at": verdict.until.isoformat(),
                    "rule": verdict.rule,
                    "reason": verdict.detail,
                },
            )
        )
        return {
            "id": row.id,
            "status": Status.SCHEDULED.value,
            "event_seq": seq,
            "updated_at": now,
            "next_attempt_at": verdict.until,
            **done,
        }
    check_transition(Status(row.status), Status.REJECTED)
    events.append(
        event_row(
            row.id,
            row.account_id,
            seq,
            Status.REJECTED,
            at=now,
            error_code=verdict.code,
            detail={"rule": verdict.rule, "error_message": verdict.detail},
        )
    )
    return {
        "id": row.id,
        "status": Status.REJECTED.value,
        "event_seq": seq,
        "updated_at": now,
        "error_code": verdict.code,
        "error_message": verdict.detail[:500],
        "failed_at": now,
        "next_attempt_at": None,
        **done,
    }


async def _leased(session: AsyncSession, message_id: str, owner: str) -> Message | None:
    message = await session.scalar(
        select(Message).where(Message.id == message_id).with_for_update()
    )
    if message is None or message.status != Status.SENDING or message.lease_owner != owner:
        return None
    return message


def _release_lease(message: Message) -> None:
    message.lease_owner = None
    message.lease_until = None


def _fail(
    session: AsyncSession,
    message: Message,
    *,
    now: datetime,
    code: str,
    text: str,
    raw_code: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    transition(
        session,
        message,
        Status.FAILED,
        at=now,
        error_code=code,
        detail={"error_message": text, "provider_error_code": raw_code, **(detail or {})},
    )
    message.error_code = code
    message.error_message = text[:500]
    message.provider_error_code = raw_code
    message.failed_at = now
    message.next_attempt_at = None
    _release_lease(message)


# The rows an outcome group records, locked in id order.
_LEASED_ROWS = KeyedRead(
    (
        Message.id,
        Message.account_id,
        Message.status,
        Message.lease_owner,
        Message.event_seq,
        Message.expires_at,
        Message.segments,
        Message.encoding,
    ),
    key=Message.id,
    order_by=(Message.id,),
    for_update=True,
)


@dataclass(frozen=True, slots=True)
class Submitted:
    """A carrier accepted a message (`sent`, or `delivered` when acceptance is final)."""

    message_id: str
    status: Status
    provider_message_id: str | None
    detail: dict[str, Any]
    connector_id: str | None = None
    parts: Sequence[str] = ()
    segments: int | None = None
    encoding: str | None = None
    receipt_wait_s: float | None = None
    receipt_grace_s: float = 0.0


async def record_submitted_many(
    session: AsyncSession, outcomes: Sequence[Submitted], *, owner: str, now: datetime
) -> list[bool]:
    """Record many accepted sends in a few statements (the dispatcher's group commit).

    Each message is updated only if this worker still holds its lease. With `parts`
    (SMS), each part is recorded to wait for its receipt, receipts that arrived before
    this moment are applied, and the message waits for its receipts until its validity
    period (or `receipt_wait_s`) plus `receipt_grace_s`: `next_attempt_at` holds that
    deadline for the receipt-timeout sweep.
    """
    ids = sorted({o.message_id for o in outcomes})
    rows = await _LEASED_ROWS.rows(session, ids)
    leased = {r.id: r for r in rows if r.status == Status.SENDING and r.lease_owner == owner}
    applied: list[bool] = []
    changes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    provider_ids: list[str] = []
    for outcome in outcomes:
        row = leased.pop(outcome.message_id, None)
        if row is None:
            applied.append(False)
            continue
        check_transition(Status.SENDING, outcome.status)
        seq = row.event_seq + 1
        events.append(
            event_row(
                row.id,
                row.account_id,
                seq,
                outcome.status,
                at=now,
                detail={"provider_message_id": outcome.provider_message_id, **outcome.detail},
            )
        )
        deadline = None
        if outcome.status is Status.SENT and outcome.receipt_wait_s is not None:
            deadline = receipt_deadline(
                sent_at=now,
                expires_at=row.expires_at,
                wait_s=outcome.receipt_wait_s,
                grace_s=outcome.receipt_grace_s,
            )
        changes.append(
            {
                "id": row.id,
                "status": outcome.status.value,
                "event_seq": seq,
                "updated_at": now,
                "provider_message_id": outcome.provider_message_id,
                "provider_detail": outcome.detail,
                "sent_at": now,
                "delivered_at": now if outcome.status is Status.DELIVERED else None,
                "error_code": None,
                "error_message": None,
                "provider_error_code": None,
                "segments": outcome.segments if outcome.segments is not None else row.segments,
                "encoding": outcome.encoding if outcome.encoding is not None else row.encoding,
                "next_attempt_at": deadline,
                "lease_owner": None,
                "lease_until": None,
            }
        )
        if outcome.parts and outcome.connector_id is not None:
            parts.extend(part_rows(row.id, outcome.connector_id, outcome.parts, now=now))
            provider_ids.extend(outcome.parts)
        applied.append(True)
    delivered = [c for c in changes if c["status"] == Status.DELIVERED.value]
    if delivered:
        account_of = {r.id: r.account_id for r in rows}
        await empty_delivered_content(session, delivered, account_of, now)
    if changes:
        await update_rows(session, Message, changes, key=("id",))
        await insert_rows(session, MessageEvent, events)
    if parts:
        await insert_rows(session, MessagePart, parts)
        await apply_pending_for_parts(session, provider_ids, now=now)
    return applied


async def record_submitted(
    session: AsyncSession,
    *,
    message_id: str,
    owner: str,
    status: Status,
    provider_message_id: str | None,
    detail: dict[str, Any],
    now: datetime,
    connector_id: str | None = None,
    parts: Sequence[str] = (),
    segments: int | None = None,
    encoding: str | None = None,
    receipt_wait_s: float | None = None,
    receipt_grace_s: float = 0.0,
) -> bool:
    """One accepted send (see `record_submitted_many`)."""
    outcome = Submitted(
        message_id=message_id,
        status=status,
        provider_message_id=provider_message_id,
        detail=detail,
        connector_id=connector_id,
        parts=parts,
        segments=segments,
        encoding=encoding,
        receipt_wait_s=receipt_wait_s,
        receipt_grace_s=receipt_grace_s,
    )
    (applied,) = await record_submitted_many(session, [outcome], owner=owner, now=now)
    return applied


async def record_failed(
    session: AsyncSession,
    *,
    message_id: str,
    owner: str,
    code: str,
    text: str,
    raw_code: str | None,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> bool:
    message = await _leased(session, message_id, owner)
    if message is None:
        return False
    _fail(session, message, now=now, code=code, text=text, raw_code=raw_code, detail=detail)
    return True


async def record_retry(
    session: AsyncSession,
    *,
    message_id: str,
    owner: str,
    code: str,
    text: str,
    raw_code: str | None,
    retry_at: datetime,
    now: datetime,
) -> bool:
    """A temporary failure: back to `queued`, due again at `retry_at`."""
    message = await _leased(session, message_id, owner)
    if message is None:
        return False
    transition(
        session,
        message,
        Status.QUEUED,
        at=now,
        error_code=code,
        detail={
            "error_message": text,
            "provider_error_code": raw_code,
            "retry_at": retry_at.isoformat(),
        },
    )
    message.error_code = code
    message.error_message = text[:500]
    message.provider_error_code = raw_code
    message.next_attempt_at = retry_at
    _release_lease(message)
    return True


async def record_not_attempted(
    session: AsyncSession, *, message_id: str, owner: str, reason: str, now: datetime
) -> bool:
    """Give back a message this worker claimed but could not try (`reason`: the channel's code).

    Queued and due at once for another worker, its lease ended, and the attempt the claim
    counted taken back; the `queued` event says why (`{"reason": ...}`), as a lease given back
    at shutdown does, and the next claim records its own `sending` with the same attempt
    number. The last failure's `error_code`, if any, stays: it is still the last thing that
    went wrong.
    """
    message = await _leased(session, message_id, owner)
    if message is None:
        return False
    transition(session, message, Status.QUEUED, at=now, detail={"reason": reason})
    message.attempts = max(0, message.attempts - 1)
    message.next_attempt_at = now
    _release_lease(message)
    return True


async def extend_leases(
    session: AsyncSession, *, owner: str, message_ids: list[str], lease_s: float, now: datetime
) -> int:
    """Renew the leases of sends still in flight, so a slow carrier never makes them claimable.

    Rows another transaction holds are skipped, not waited for: that is the outcome writer
    recording them (which ends the lease anyway) or a receipt, and renewal comes again in a
    third of a lease. Never waiting is also what keeps renewal out of deadlocks: its UPDATE
    over many rows would otherwise lock them in scan order while the outcome writer locks
    the same rows in id order (PostgreSQL; SQLite has one writer at a time).
    """
    if not message_ids:
        return 0
    lockable = (
        select(Message.id)
        .where(
            in_list(session, Message.id, sorted(set(message_ids))),
            Message.lease_owner == owner,
            Message.status == Status.SENDING.value,
        )
        .order_by(Message.id)
        .with_for_update(skip_locked=True)
    )
    lease_until = now + timedelta(seconds=lease_s)
    # One statement: the sub-select locks in id order and skips held rows, the UPDATE
    # changes only what it locked.
    result = await session.execute(
        update(Message)
        .where(Message.id.in_(lockable))
        .values(lease_until=lease_until, next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def lock_messages(session: AsyncSession, message_ids: Sequence[str]) -> None:
    """Lock these message rows in id order, the one order every multi-row writer uses."""
    if message_ids:
        await session.execute(
            select(Message.id)
            .where(in_list(session, Message.id, sorted(set(message_ids))))
            .order_by(Message.id)
            .with_for_update()
        )


async def release_leases(
    session: AsyncSession, *, owner: str, message_ids: list[str], now: datetime
) -> int:
    """Give claimed messages back at shutdown, due at once for another worker."""
    released = 0
    for message_id in sorted(message_ids):  # row locks in id order, as everywhere
        message = await _leased(session, message_id, owner)
        if message is None:
            continue
        transition(session, message, Status.QUEUED, at=now, detail={"reason": "worker shutdown"})
        message.next_attempt_at = now
        _release_lease(message)
        released += 1
    return released
