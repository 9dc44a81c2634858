"""Carriers: tables for connectors and routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from amnex.db.base import Base, JSONType


class Connector(Base):
    """One carrier connection (today: an SMPP account at an SMSC).

    `config` holds every setting except the secret; `secret` holds the password encrypted
    with the master key (`privacy.crypto`), never in clear.
    """

    __tablename__ = "connectors"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(default=True)
    config: Mapped[dict[str, Any]]
    secret: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Route(Base):
    """Where messages go: (channel, destination prefix or country, account) → connectors.

    `connector_ids` is an ordered list: the first connector that is up takes the message,
    the next ones are the failover. Empty `prefix`, null `country` and null `account_id`
    match everything; the most specific matching route wins (see `carriers.routing`).
    """

    __tablename__ = "routes"
    __table_args__ = (Index(None, "channel"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    country: Mapped[str | None] = mapped_column(String(2))
    prefix: Mapped[str] = mapped_column(String(16), default="")
    connector_ids: Mapped[list[str]] = mapped_column(JSONType)
    priority: Mapped[int] = mapped_column(default=0)
    # Text-enabled landlines: SMS to numbers typed as landlines go through this route.
    allow_landline: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(120))
