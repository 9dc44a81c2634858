"""Bind leases: which worker holds which of a connector's SMPP bind slots, and the workers
taking part.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): workers of the previous
# version open every bind without leases, so both versions together would exceed a connector's
# binds.
online: bool = False


def upgrade() -> None:
    op.create_table(
        "bind_leases",
        sa.Column("connector_id", sa.String(length=40), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("connector_id", "slot", name=op.f("pk_bind_leases")),
    )
    op.create_table(
        "bind_lease_workers",
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_bind_lease_workers")),
    )


def downgrade() -> None:
    op.drop_table("bind_lease_workers")
    op.drop_table("bind_leases")
