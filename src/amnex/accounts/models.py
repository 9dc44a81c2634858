"""Accounts: tables for accounts, API keys, senders and operators."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from amnex.db.base import Base


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    business_name: Mapped[str] = mapped_column(String(200))
    contact_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    country: Mapped[str] = mapped_column(String(2), default="US")
    status: Mapped[str] = mapped_column(String(16), default="active")
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    # SHA-256 of the whole key: keys carry 256 random bits, so a fast hash is safe here.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(64))
    rate_limit_per_s: Mapped[int | None]
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(80))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Sender(Base):
    """An address an account may send from: an email address, a whole `@domain`, a number."""

    __tablename__ = "senders"
    __table_args__ = (
        UniqueConstraint("account_id", "channel", "address"),
        # A number or short code belongs to one account: inbound messages to it go there.
        Index(
            "uq_senders_number",
            "channel",
            "address",
            unique=True,
            sqlite_where=text("channel != 'email'"),
            postgresql_where=text("channel != 'email'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    channel: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(320))
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(80))


class Operator(Base):
    """A named person who runs the platform; their token authenticates `/admin/v1`."""

    __tablename__ = "operators"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
