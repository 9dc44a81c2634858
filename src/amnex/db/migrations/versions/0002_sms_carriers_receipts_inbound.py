"""SMS: connectors, routes, message parts, pending receipts, inbound parts, number ownership.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): changes the messages
# table the previous version writes.
online: bool = False


def upgrade() -> None:
    op.create_table(
        "connectors",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connectors")),
        sa.UniqueConstraint("name", name=op.f("uq_connectors_name")),
    )
    op.create_table(
        "inbound_parts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connector_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("data_coding", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_parts")),
        sa.UniqueConstraint(
            "connector_id",
            "source",
            "destination",
            "reference",
            "total",
            "sequence",
            name=op.f("uq_inbound_parts_connector_id_source_destination_reference_total_sequence"),
        ),
    )
    with op.batch_alter_table("inbound_parts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbound_parts_received_at"), ["received_at"], unique=False
        )

    op.create_table(
        "pending_receipts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connector_id", sa.String(length=40), nullable=False),
        sa.Column("provider_message_id", sa.String(length=120), nullable=False),
        sa.Column("id_key", sa.String(length=120), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=True),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("raw_error", sa.String(length=40), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_receipts")),
    )
    with op.batch_alter_table("pending_receipts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pending_receipts_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_pending_receipts_id_key"), ["id_key"], unique=False)

    op.create_table(
        "routes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column(
            "connector_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_routes_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routes")),
    )
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routes_channel"), ["channel"], unique=False)

    op.create_table(
        "message_parts",
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("part", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("connector_id", sa.String(length=40), nullable=False),
        sa.Column("provider_message_id", sa.String(length=120), nullable=False),
        sa.Column("id_key", sa.String(length=120), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("provider_error_code", sa.String(length=40), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_parts_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "part", name=op.f("pk_message_parts")),
    )
    with op.batch_alter_table("message_parts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_message_parts_id_key"), ["id_key"], unique=False)

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "encoding_report",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )

    with op.batch_alter_table("senders", schema=None) as batch_op:
        batch_op.create_index(
            "uq_senders_number",
            ["channel", "address"],
            unique=True,
            sqlite_where=sa.text("channel != 'email'"),
            postgresql_where=sa.text("channel != 'email'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("senders", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_senders_number",
            sqlite_where=sa.text("channel != 'email'"),
            postgresql_where=sa.text("channel != 'email'"),
        )

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("encoding_report")

    with op.batch_alter_table("message_parts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_parts_id_key"))

    op.drop_table("message_parts")
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routes_channel"))

    op.drop_table("routes")
    with op.batch_alter_table("pending_receipts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_receipts_received_at"))
        batch_op.drop_index(batch_op.f("ix_pending_receipts_id_key"))

    op.drop_table("pending_receipts")
    with op.batch_alter_table("inbound_parts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_parts_received_at"))

    op.drop_table("inbound_parts")
    op.drop_table("connectors")
