"""Messages: where a message came from (the API, or Amnex's reply to a keyword), and the
index the compliance gate's first-contact look-up uses.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): replaces an index of
# messages the previous version queries.
online: bool = False


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=16), nullable=True))
    op.create_index(
        "ix_messages_account_id_to_addr", "messages", ["account_id", "to_addr"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_messages_account_id_to_addr", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("origin")
