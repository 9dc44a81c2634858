"""Audit log: an anchor per chain (`anchor_seq`, `anchor_hash` on `audit_chain_heads`), the
newest entry retention deleted, from which the chain is verified.

Existing chains have had nothing deleted: their anchor is 0 and 64 zeros, as before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Online: safe to apply while processes of the previous version run (`amnex db upgrade`): two
# columns with defaults on audit_chain_heads; the previous version never reads them.
online: bool = True

GENESIS_HASH = "0" * 64


def upgrade() -> None:
    with op.batch_alter_table("audit_chain_heads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("anchor_seq", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "anchor_hash", sa.String(length=64), server_default=GENESIS_HASH, nullable=False
            )
        )


def downgrade() -> None:
    # Going down forgets the anchors: a chain retention shortened no longer verifies from 1.
    with op.batch_alter_table("audit_chain_heads", schema=None) as batch_op:
        batch_op.drop_column("anchor_hash")
        batch_op.drop_column("anchor_seq")
