"""Privacy: data-subject requests (access, portability, erasure, restriction, objection),
their append-only trail, and the exports they produced.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): added before upgrades
# with running workers were supported.
online: bool = False


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "subject_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("channel_kind", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.Column("address_masked", sa.String(length=320), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("extended_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("extension_reason", sa.String(length=500), nullable=True),
        sa.Column("requested_by", sa.String(length=120), nullable=False),
        sa.Column("result", _json(), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_subject_requests_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_requests")),
    )
    with op.batch_alter_table("subject_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subject_requests_account_id_id"), ["account_id", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_subject_requests_status_due_at"), ["status", "due_at"], unique=False
        )
    op.create_table(
        "subject_request_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("request_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=24), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("detail", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["subject_requests.id"],
            name=op.f("fk_subject_request_events_request_id_subject_requests"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_request_events")),
    )
    with op.batch_alter_table("subject_request_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subject_request_events_request_id"), ["request_id"], unique=False
        )
    op.create_table(
        "subject_request_exports",
        sa.Column("request_id", sa.String(length=40), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["subject_requests.id"],
            name=op.f("fk_subject_request_exports_request_id_subject_requests"),
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_subject_request_exports")),
    )


def downgrade() -> None:
    op.drop_table("subject_request_exports")
    with op.batch_alter_table("subject_request_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subject_request_events_request_id"))
    op.drop_table("subject_request_events")
    with op.batch_alter_table("subject_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subject_requests_status_due_at"))
        batch_op.drop_index(batch_op.f("ix_subject_requests_account_id_id"))
    op.drop_table("subject_requests")
