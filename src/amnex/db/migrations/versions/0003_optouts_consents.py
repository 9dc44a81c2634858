"""Recipients: the suppression list (opt-outs and their history) and the consent ledger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): the previous version has
# no opt-out tables to keep.
online: bool = False


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "consent_chain_heads",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_consent_chain_heads_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_consent_chain_heads")),
    )
    op.create_table(
        "consent_entries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("text_shown", sa.Text(), nullable=True),
        sa.Column("evidence", _json(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=120), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_consent_entries_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_entries")),
        sa.UniqueConstraint(
            "account_id", "prev_hash", name=op.f("uq_consent_entries_account_id_prev_hash")
        ),
        sa.UniqueConstraint("account_id", "seq", name=op.f("uq_consent_entries_account_id_seq")),
    )
    with op.batch_alter_table("consent_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consent_entries_account_id_address_channel_purpose_seq"),
            ["account_id", "address", "channel", "purpose", "seq"],
            unique=False,
        )

    op.create_table(
        "opt_out_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("opt_out_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=24), nullable=False),
        sa.Column("evidence", _json(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_opt_out_events_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opt_out_events")),
    )
    with op.batch_alter_table("opt_out_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_opt_out_events_account_id_id"), ["account_id", "id"], unique=False
        )

    op.create_table(
        "opt_outs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("source", sa.String(length=24), nullable=False),
        sa.Column("evidence", _json(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_opt_outs_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opt_outs")),
    )
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_opt_outs_address_channel"), ["address", "channel"], unique=False
        )
        # One row per (account, channel, address), and per (channel, address) platform-wide:
        # nulls are distinct in a unique constraint, so each owner kind has its own index.
        batch_op.create_index(
            "uq_opt_outs_account",
            ["account_id", "channel", "address"],
            unique=True,
            sqlite_where=sa.text("account_id IS NOT NULL"),
            postgresql_where=sa.text("account_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_opt_outs_platform",
            ["channel", "address"],
            unique=True,
            sqlite_where=sa.text("account_id IS NULL"),
            postgresql_where=sa.text("account_id IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_opt_outs_platform",
            sqlite_where=sa.text("account_id IS NULL"),
            postgresql_where=sa.text("account_id IS NULL"),
        )
        batch_op.drop_index(
            "uq_opt_outs_account",
            sqlite_where=sa.text("account_id IS NOT NULL"),
            postgresql_where=sa.text("account_id IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_opt_outs_address_channel"))

    op.drop_table("opt_outs")
    with op.batch_alter_table("opt_out_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_opt_out_events_account_id_id"))

    op.drop_table("opt_out_events")
    with op.batch_alter_table("consent_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_entries_account_id_address_channel_purpose_seq"))

    op.drop_table("consent_entries")
    op.drop_table("consent_chain_heads")
