"""Recipients: tables for the suppression list (opt-outs, with their history) and the consent
ledger (append-only, hash-chained per account).

No address is stored in clear: each row has the blind index of the normalised address
(`address_index`, `privacy.keys.blind_index`), which every look-up compares, and the address
sealed under the owning account's data key (`address`, the platform's key for platform rows),
which only display and exports open. Evidence is sealed too (`SealedJSON`). Every read and
write of them goes through `recipients.service`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from amnex.db.base import Base
from amnex.privacy.keys import SealedJSON

# The longest address accepted: an email address (RFC 5321 path limit) or a push token.
ADDRESS_LENGTH = 320
# The width of a blind index (`privacy.keys`).
INDEX_LENGTH = 32


class OptOut(Base):
    """One address that must not be sent to: by one account, or platform-wide (`account_id`
    null), on one channel or on every channel (`channel` = "all"; never null).

    At most one row per (account, channel, address). SQL treats nulls as distinct in a unique
    constraint, so two partial unique indexes say it: one for account rows, one for platform
    rows. `ix_opt_outs_address_channel` serves the gate's look-up, which names the address.
    """

    __tablename__ = "opt_outs"
    __table_args__ = (
        Index(
            "uq_opt_outs_account",
            "account_id",
            "channel",
            "address_index",
            unique=True,
            sqlite_where=text("account_id IS NOT NULL"),
            postgresql_where=text("account_id IS NOT NULL"),
        ),
        Index(
            "uq_opt_outs_platform",
            "channel",
            "address_index",
            unique=True,
            sqlite_where=text("account_id IS NULL"),
            postgresql_where=text("account_id IS NULL"),
        ),
        Index(None, "address_index", "channel"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    channel: Mapped[str] = mapped_column(String(8))
    address_index: Mapped[str | None] = mapped_column(String(INDEX_LENGTH))
    # Sealed; null once the subject's erasure left only the suppression marker.
    address: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(24))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(SealedJSON)
    created_at: Mapped[datetime]


class OptOutEvent(Base):
    """Append-only history of the suppression list: one row per opt-out created or deleted.

    Rows are only inserted. They outlive the opt-out they describe (a deleted opt-out keeps its
    `created` and `deleted` rows), and will feed the `optout.created` / `optout.deleted`
    webhooks.
    """

    __tablename__ = "opt_out_events"
    __table_args__ = (Index(None, "account_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    opt_out_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    channel: Mapped[str] = mapped_column(String(8))
    address_index: Mapped[str | None] = mapped_column(String(INDEX_LENGTH))
    address: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(24))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(SealedJSON)
    at: Mapped[datetime]


class ConsentEntry(Base):
    """One entry of an account's consent ledger: a grant or a revocation, with its evidence.

    Entries are only inserted. `seq` numbers an account's entries 1, 2, 3, …; `hash` is the
    SHA-256 of the entry's canonical JSON (its non-personal fields, `prev_hash` included), and
    `prev_hash` the hash of entry `seq - 1` (64 zeros for the first), so an edited, removed or
    inserted row breaks the chain (`service.verify_chain`). The unique (account_id, seq) and
    (account_id, prev_hash) make a fork impossible even for a writer that bypassed the chain
    head.

    Personal fields stand apart from the chain: the address (its blind index and its sealed
    form) and the evidence. The chain hashes `personal_digest`, the SHA-256 of those fields
    and a random `personal_salt`; while they are present, verification recomputes the digest,
    so they cannot be edited unnoticed either. Erasure clears them and the salt: the digest
    left behind says nothing about the person, and the chain still verifies.
    """

    __tablename__ = "consent_entries"
    __table_args__ = (
        UniqueConstraint("account_id", "seq"),
        UniqueConstraint("account_id", "prev_hash"),
        # live_consent: the newest entry for one (account, address, channel, purpose).
        Index(None, "account_id", "address_index", "channel", "purpose", "seq"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    seq: Mapped[int]
    channel: Mapped[str] = mapped_column(String(8))
    address_index: Mapped[str | None] = mapped_column(String(INDEX_LENGTH))
    address: Mapped[str | None] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16))
    text_shown: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(SealedJSON)
    personal_salt: Mapped[str | None] = mapped_column(String(32))
    personal_digest: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(120))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ConsentChainHead(Base):
    """The end of an account's consent chain: its last `seq` and `hash`.

    Appending locks this row (`SELECT … FOR UPDATE` on PostgreSQL; SQLite writers are
    serialised by `BEGIN IMMEDIATE`) and moves it in the same transaction as the insert, so two
    grants at once queue instead of both extending the same entry. It also lets
    `verify_chain` notice entries removed from the end of the chain.
    """

    __tablename__ = "consent_chain_heads"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    seq: Mapped[int]
    hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]
