"""Dispatch: claiming due messages under a lease, and recording what became of them.

Design note. The message row is its own job (`status`, `next_attempt_at`, `attempts`,
`lease_owner`, `lease_until`). A claim selects due rows — queued or scheduled whose time has
come, or `sending` rows whose lease expired (the claim sets `next_attempt_at` to the lease's
end, so one index serves both) — with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent
workers never take the same row; SQLite has one writer and takes its lock at `BEGIN
IMMEDIATE`. The claim and its `sending` events commit together.

Recording an outcome re-reads the row under a lock and applies it only if this worker still
holds the lease: a worker that lost its lease (it stalled, another worker reclaimed the row)
cannot overwrite the newer attempt. Every recording is safe to run twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.channels.base import OutboundMessage
from amnex.messages.models import Message
from amnex.messages.service import transition
from amnex.messages.status import CLAIMABLE_STATUSES, Status
from amnex.receipts.apply import apply_pending_for_parts, receipt_deadline, record_parts

# record_submitted / record_failed / record_retry, called with the session and keywords.
Recorder = Callable[..., Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    outbound: OutboundMessage
    expires_at: datetime | None


async def claim_due_messages(
    session: AsyncSession,
    *,
    owner: str,
    limit: int,
    lease_s: float,
    now: datetime,
) -> list[ClaimedMessage]:
    """Take up to `limit` due messages under a lease held by `owner`; expired ones fail here."""
    rows = list(
        await session.scalars(
            select(Message)
            .where(
                Message.status.in_([s.value for s in CLAIMABLE_STATUSES]),
                Message.next_attempt_at <= now,
            )
            .order_by(Message.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    lease_until = now + timedelta(seconds=lease_s)
    claimed: list[ClaimedMessage] = []
    for message in rows:
        previous = Status(message.status)
        if previous is Status.SCHEDULED:
            transition(session, message, Status.QUEUED, at=now, detail={"reason": "send_at"})
        if message.expires_at is not None and message.expires_at <= now:
            _fail(
                session,
                message,
                now=now,
                code="expired",
                text="the validity period ended before the message could be sent",
            )
            continue
        detail: dict[str, Any] = {"attempt": message.attempts + 1, "worker": owner}
        if previous is Status.SENDING:
            detail["reclaimed_from"] = message.lease_owner
        transition(session, message, Status.SENDING, at=now, detail=detail)
        message.attempts += 1
        message.lease_owner = owner
        message.lease_until = lease_until
        message.next_attempt_at = lease_until
        claimed.append(
            ClaimedMessage(
                outbound=OutboundMessage(
                    id=message.id,
                    account_id=message.account_id,
                    channel=message.channel,
                    from_addr=message.from_addr,
                    to_addr=message.to_addr,
                    subject=message.subject,
                    body=message.body,
                    html=message.html,
                    category=message.category,
                    created_at=message.created_at,
                    attempt=message.attempts,
                    metadata=dict(message.meta or {}),
                    expires_at=message.expires_at,
                ),
                expires_at=message.expires_at,
            )
        )
    return claimed


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
    """The carrier accepted the message (`sent`, or `delivered` when acceptance is final).

    With `parts` (SMS), each part is recorded to wait for its receipt, receipts that
    arrived before this moment are applied, and the message waits for its receipts until
    its validity period (or `receipt_wait_s`) plus `receipt_grace_s`: `next_attempt_at`
    holds that deadline for the receipt-timeout sweep.
    """
    message = await _leased(session, message_id, owner)
    if message is None:
        return False
    transition(
        session,
        message,
        status,
        at=now,
        detail={"provider_message_id": provider_message_id, **detail},
    )
    message.provider_message_id = provider_message_id
    message.provider_detail = detail
    message.sent_at = now
    message.error_code = None
    message.error_message = None
    message.provider_error_code = None
    if segments is not None:
        message.segments = segments
    if encoding is not None:
        message.encoding = encoding
    message.next_attempt_at = None
    if status is Status.DELIVERED:
        message.delivered_at = now
    elif receipt_wait_s is not None:
        message.next_attempt_at = receipt_deadline(
            sent_at=now,
            expires_at=message.expires_at,
            wait_s=receipt_wait_s,
            grace_s=receipt_grace_s,
        )
    _release_lease(message)
    if parts and connector_id is not None:
        record_parts(session, message, connector_id=connector_id, provider_ids=parts, now=now)
        await session.flush()
        await apply_pending_for_parts(session, parts, now=now)
    return True


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


async def extend_leases(
    session: AsyncSession, *, owner: str, message_ids: list[str], lease_s: float, now: datetime
) -> int:
    """Renew the leases of sends still in flight, so a slow carrier never makes them claimable."""
    if not message_ids:
        return 0
    lease_until = now + timedelta(seconds=lease_s)
    result = await session.execute(
        update(Message)
        .where(
            Message.id.in_(message_ids),
            Message.lease_owner == owner,
            Message.status == Status.SENDING.value,
        )
        .values(lease_until=lease_until, next_attempt_at=lease_until)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def release_leases(
    session: AsyncSession, *, owner: str, message_ids: list[str], now: datetime
) -> int:
    """Give claimed messages back at shutdown, due at once for another worker."""
    released = 0
    for message_id in message_ids:
        message = await _leased(session, message_id, owner)
        if message is None:
            continue
        transition(session, message, Status.QUEUED, at=now, detail={"reason": "worker shutdown"})
        message.next_attempt_at = now
        _release_lease(message)
        released += 1
    return released
