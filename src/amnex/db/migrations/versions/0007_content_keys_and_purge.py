"""Privacy: content keys (content encrypted at rest, destroyed with its key), the purge's
record of what it did, and the index of messages whose content is not purged yet.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): the previous version
# stores content in clear beside encrypted content.
online: bool = False


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "content_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_content_keys")),
    )
    op.create_table(
        "purge_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("counts", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purge_runs")),
    )
    op.create_index("ix_purge_runs_started_at", "purge_runs", ["started_at"], unique=False)
    op.create_index(
        "ix_messages_unpurged",
        "messages",
        ["status"],
        unique=False,
        sqlite_where=sa.text("content_purged_at IS NULL"),
        postgresql_where=sa.text("content_purged_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_unpurged", table_name="messages")
    op.drop_index("ix_purge_runs_started_at", table_name="purge_runs")
    op.drop_table("purge_runs")
    op.drop_table("content_keys")
