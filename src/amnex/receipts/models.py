"""Receipts: tables for receipts not yet matched to a part, and inbound parts awaiting the rest."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from amnex.db.base import Base
from amnex.privacy.content import EncryptedText

ROW_PK = BigInteger().with_variant(Integer(), "sqlite")


class PendingReceipt(Base):
    """A receipt stored before its submit_sm_resp was recorded (or for an id never seen).

    Kept, never dropped: the receipt sweeper matches it once the part exists, and deletes it
    after `unmatched_receipt_ttl_s` (counted in metrics and logged).
    """

    __tablename__ = "pending_receipts"
    __table_args__ = (Index(None, "received_at"), Index(None, "id_key"))

    id: Mapped[int] = mapped_column(ROW_PK, primary_key=True, autoincrement=True)
    connector_id: Mapped[str] = mapped_column(String(40))
    provider_message_id: Mapped[str] = mapped_column(String(120))
    # `dlr.canonical_id` of the provider id: a part recorded later looks itself up by it.
    id_key: Mapped[str] = mapped_column(String(120))
    state: Mapped[str] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(12))
    error_code: Mapped[str | None] = mapped_column(String(40))
    raw_error: Mapped[str | None] = mapped_column(String(40))
    done_at: Mapped[datetime | None]
    received_at: Mapped[datetime]


class InboundPart(Base):
    """One part of a multi-part inbound SMS, kept until every part has arrived."""

    __tablename__ = "inbound_parts"
    __table_args__ = (
        UniqueConstraint("connector_id", "source", "destination", "reference", "total", "sequence"),
        Index(None, "received_at"),
    )

    id: Mapped[int] = mapped_column(ROW_PK, primary_key=True, autoincrement=True)
    connector_id: Mapped[str] = mapped_column(String(40))
    # The sender's blind index (what parts are grouped by), and the sender sealed under the
    # platform data key; the text under the current content key, as hex of the bytes.
    source: Mapped[str] = mapped_column(String(32))
    source_addr: Mapped[str | None] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(32))
    reference: Mapped[int]
    total: Mapped[int]
    sequence: Mapped[int]
    data_coding: Mapped[int]
    payload: Mapped[str] = mapped_column(EncryptedText("inbound_part"))
    received_at: Mapped[datetime]
