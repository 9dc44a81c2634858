"""Messages: the message table (a row is also its dispatch job), its events, idempotency keys."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, Numeric, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from amnex.db.base import Base
from amnex.privacy.content import EncryptedText

EVENT_PK = BigInteger().with_variant(Integer(), "sqlite")


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # The dispatch queue: claim due rows by status, oldest due first.
        Index(None, "status", "next_attempt_at"),
        Index(None, "account_id", "id"),
        # The compliance gate's first-contact look-up, list filters by recipient, subject
        # requests: by the blind index of the person at the other end.
        Index(None, "peer_index", "account_id"),
        # Messages whose content is not purged yet: what the purge and key destruction read.
        Index(
            "ix_messages_unpurged",
            "status",
            sqlite_where=text("content_purged_at IS NULL"),
            postgresql_where=text("content_purged_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    channel: Mapped[str] = mapped_column(String(8))
    direction: Mapped[str] = mapped_column(String(8), default="outbound")
    # Null for a message sent through the API; the kind of reply for one Amnex sends itself
    # to a recipient's keyword (`opt_out_reply`, `opt_in_reply`, `help_reply`).
    origin: Mapped[str | None] = mapped_column(String(16))
    # The person's address — `to_addr` of an outbound message, `from_addr` of an inbound one —
    # is sealed under the account's data key (`privacy.keys`; read it with `open_address`);
    # the account's own sender or number on the other side is stored as it is. `peer_index`
    # is the blind index of the person's address, what every look-up by person compares.
    from_addr: Mapped[str] = mapped_column(Text)
    to_addr: Mapped[str] = mapped_column(Text)
    peer_index: Mapped[str | None] = mapped_column(String(32))
    # The connector an outbound SMS was routed to at accept (its route's first enabled one),
    # which its backlog counts against (`api.backpressure`); dispatch routes again, and may
    # fail over to another. Null for channels without connectors (email) and inbound.
    connector_id: Mapped[str | None] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(12))
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(String(500))
    provider_error_code: Mapped[str | None] = mapped_column(String(40))
    provider_message_id: Mapped[str | None] = mapped_column(String(120))
    provider_detail: Mapped[dict[str, Any] | None]
    # Content: null once purged (policy §5).
    subject: Mapped[str | None] = mapped_column(EncryptedText("subject"))
    body: Mapped[str | None] = mapped_column(EncryptedText("body"))
    html: Mapped[str | None] = mapped_column(EncryptedText("html"))
    content_purged_at: Mapped[datetime | None]
    segments: Mapped[int | None]
    encoding: Mapped[str | None] = mapped_column(String(12))
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 6))
    send_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    status_callback: Mapped[str | None] = mapped_column(String(2048))
    meta: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    # The job: due time, attempts, and the lease of the worker that holds it.
    next_attempt_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]
    event_seq: Mapped[int] = mapped_column(default=0)
    # SMS: the characters smart encoding replaced and those that forced UCS-2.
    encoding_report: Mapped[dict[str, Any] | None]


class MessagePart(Base):
    """One submitted part of a message (an SMS segment), and what its receipt said.

    `id_key` is the provider id normalised for matching (`receipts.dlr.canonical_id`); a
    receipt looks its part up by `receipts.dlr.receipt_id_key` of its own id.
    """

    __tablename__ = "message_parts"
    __table_args__ = (Index(None, "id_key"),)

    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    part: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    connector_id: Mapped[str] = mapped_column(String(40))
    provider_message_id: Mapped[str] = mapped_column(String(120))
    id_key: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(12))
    error_code: Mapped[str | None] = mapped_column(String(40))
    provider_error_code: Mapped[str | None] = mapped_column(String(40))
    updated_at: Mapped[datetime]


class MessageEvent(Base):
    """One status transition: what, when, in which order, and why."""

    __tablename__ = "message_events"
    __table_args__ = (Index(None, "message_id", "seq"),)

    id: Mapped[int] = mapped_column(EVENT_PK, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    account_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int]
    status: Mapped[str] = mapped_column(String(12))
    at: Mapped[datetime]
    error_code: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[dict[str, Any] | None]


class IdempotencyRecord(Base):
    """An Idempotency-Key seen on a POST: only hashes are kept, and the id it created."""

    __tablename__ = "idempotency_keys"

    account_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(40))
    status_code: Mapped[int]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
