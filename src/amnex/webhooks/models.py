"""Webhooks: endpoints, the outbox the database fills, events, deliveries, attempts, notices.

Design note. What happened is already written down, in the same transaction that did it, by
append-only tables: `message_events` (every status change, inbound messages included),
`opt_out_events`, `consent_entries` and `subject_request_events`. Database triggers (migration
0011) add one `webhook_outbox` row per such insert, in that same transaction, when the
account has an enabled endpoint (or, for a message, a `status_callback`). So an event is never
lost between the change and its webhook, and the write paths know nothing of webhooks. The
sender (`webhooks.sender`) turns outbox rows into `webhook_events` (the payload, built from
the current state: ids, statuses, codes, timestamps, segments, price — never content) and one
`webhook_deliveries` row per endpoint that wants the type, then deletes the outbox rows, in
one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from amnex.db.base import Base, JSONType
from amnex.privacy.keys import SealedJSON

ROW_PK = BigInteger().with_variant(Integer(), "sqlite")


class WebhookEndpoint(Base):
    """A client's receiver: where, which event types (None: all), and its signing secrets.

    `secret` is sealed with the master key (context `webhook:<id>`). During a rotation's
    overlap window the old secret stays in `previous_secret` until
    `previous_secret_expires_at`, and both sign every delivery.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index(None, "account_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(200))
    event_types: Mapped[list[str] | None] = mapped_column(JSONType)
    enabled: Mapped[bool]
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    # Since when every delivery to it has failed (null while it succeeds); a day of that
    # disables it (`disabled_reason` "failing"), as does a 410 ("gone").
    failing_since: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(16))
    max_concurrency: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookOutbox(Base):
    """One change a webhook may be owed for, inserted by a trigger with the change itself."""

    __tablename__ = "webhook_outbox"

    id: Mapped[int] = mapped_column(ROW_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(16))  # message, opt_out, consent, request
    source_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime]


class WebhookEvent(Base):
    """An event as sent: its id is the `webhook-id` every delivery and retry carries."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index(None, "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(40))
    # What it is about (a message, opt-out, consent or request id) and its place in that
    # subject's history: a newer event supersedes an older one still pending.
    subject_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int]
    # The payload's data: it names people (a message's addresses, an opt-out's), so it is
    # sealed under the platform data key like every other personal field.
    data: Mapped[dict[str, Any]] = mapped_column(SealedJSON)
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event owed to one endpoint (or to a message's `status_callback` URL)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "status", "next_attempt_at"),
        Index(None, "endpoint_id", "subject_id", "seq"),
        Index(None, "event_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    account_id: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[str | None] = mapped_column(String(40))
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    subject_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int]
    # pending → delivering → delivered | failed | superseded | canceled
    status: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int]
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    first_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_outcome: Mapped[str | None] = mapped_column(String(24))
    last_status_code: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt — outcome, code, latency; never a body."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index(None, "endpoint_id", "id"), Index(None, "at"))

    id: Mapped[int] = mapped_column(ROW_PK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[str | None] = mapped_column(String(40))
    at: Mapped[datetime]
    attempt: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(24))
    status_code: Mapped[int | None]
    latency_ms: Mapped[int]
    detail: Mapped[str | None] = mapped_column(String(200))


class Notice(Base):
    """Something an account must know (an endpoint disabled), until the portal shows it."""

    __tablename__ = "notices"
    __table_args__ = (Index(None, "account_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    read_at: Mapped[datetime | None]


async def delete_webhook_events(session: AsyncSession, subject_ids: Sequence[str]) -> int:
    """Delete the events about these subjects (messages, opt-outs, consents) with their
    deliveries and log rows — an erasure or a closure; returns how many events went."""
    if not subject_ids:
        return 0
    events = select(WebhookEvent.id).where(WebhookEvent.subject_id.in_(subject_ids))
    await session.execute(delete(WebhookAttempt).where(WebhookAttempt.event_id.in_(events)))
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(events)))
    result = await session.execute(
        delete(WebhookEvent).where(WebhookEvent.subject_id.in_(subject_ids))
    )
    return int(getattr(result, "rowcount", 0) or 0)
