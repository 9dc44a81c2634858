"""Messages: the connector an SMS was routed to at accept (`connector_id`), for each
connector's backlog.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Online: safe to apply while processes of the previous version run (`amnex db upgrade`): one
# column that may be NULL, which the previous version neither reads nor writes.
online: bool = True


def upgrade() -> None:
    op.add_column("messages", sa.Column("connector_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE on both databases: SQLite's batch mode would copy `messages`, which
    # the webhook outbox triggers (0011) name, and fail renaming the copy back.
    op.execute("ALTER TABLE messages DROP COLUMN connector_id")
