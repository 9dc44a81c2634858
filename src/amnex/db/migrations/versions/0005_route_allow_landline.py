"""Routes: `allow_landline`, for routes whose carrier delivers SMS to text-enabled landlines.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): adds a routes column the
# previous version's route writes do not fill.
online: bool = False


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(
            sa.Column("allow_landline", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("allow_landline")
