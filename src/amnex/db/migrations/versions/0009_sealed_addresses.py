"""Privacy: addresses sealed under per-account data keys and found by a blind index; consent
ledger personal fields apart from its chain; evidence, inbound parts and audit personal fields
sealed.

Existing rows keep their values as they were; `privacy.keys.seal_existing` (run when a keyed
process starts) seals them and fills the indexes, in chunks.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): seals addresses: the
# previous version writes them in clear.
online: bool = False


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _to_text(batch_op: Any, column: str, existing: Any, *, nullable: bool) -> None:
    batch_op.alter_column(
        column,
        existing_type=existing,
        type_=sa.Text(),
        existing_nullable=nullable,
        nullable=nullable,
        postgresql_using=f"{column}::text",
    )


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("id", sa.String(length=60), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("purpose", sa.String(length=8), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_keys")),
    )
    with op.batch_alter_table("data_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_data_keys_account_id"), ["account_id"], unique=False)

    op.drop_index("ix_messages_account_id_to_addr", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        _to_text(batch_op, "from_addr", sa.String(length=400), nullable=False)
        _to_text(batch_op, "to_addr", sa.String(length=320), nullable=False)
        batch_op.add_column(sa.Column("peer_index", sa.String(length=32), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_messages_peer_index_account_id"),
            ["peer_index", "account_id"],
            unique=False,
        )

    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.drop_index("uq_opt_outs_platform")
        batch_op.drop_index("uq_opt_outs_account")
        batch_op.drop_index(batch_op.f("ix_opt_outs_address_channel"))
        _to_text(batch_op, "address", sa.String(length=320), nullable=True)
        _to_text(batch_op, "evidence", _json(), nullable=True)
        batch_op.add_column(sa.Column("address_index", sa.String(length=32), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_opt_outs_address_index_channel"),
            ["address_index", "channel"],
            unique=False,
        )
        batch_op.create_index(
            "uq_opt_outs_account",
            ["account_id", "channel", "address_index"],
            unique=True,
            sqlite_where=sa.text("account_id IS NOT NULL"),
            postgresql_where=sa.text("account_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_opt_outs_platform",
            ["channel", "address_index"],
            unique=True,
            sqlite_where=sa.text("account_id IS NULL"),
            postgresql_where=sa.text("account_id IS NULL"),
        )

    with op.batch_alter_table("opt_out_events", schema=None) as batch_op:
        _to_text(batch_op, "address", sa.String(length=320), nullable=True)
        _to_text(batch_op, "evidence", _json(), nullable=True)
        batch_op.add_column(sa.Column("address_index", sa.String(length=32), nullable=True))

    with op.batch_alter_table("consent_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_entries_account_id_address_channel_purpose_seq"))
        _to_text(batch_op, "address", sa.String(length=320), nullable=True)
        _to_text(batch_op, "evidence", _json(), nullable=True)
        batch_op.add_column(sa.Column("address_index", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("personal_salt", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("personal_digest", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_consent_entries_account_id_address_index_channel_purpose_seq"),
            ["account_id", "address_index", "channel", "purpose", "seq"],
            unique=False,
        )

    # Inbound parts: the sender sealed apart, the text as hex under a content key.
    if not _postgres():
        op.execute("UPDATE inbound_parts SET payload = hex(payload)")
    with op.batch_alter_table("inbound_parts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_addr", sa.Text(), nullable=True))
        batch_op.alter_column(
            "payload",
            existing_type=sa.LargeBinary(),
            type_=sa.Text(),
            existing_nullable=False,
            postgresql_using="encode(payload, 'hex')",
        )

    with op.batch_alter_table("subject_requests", schema=None) as batch_op:
        _to_text(batch_op, "address", sa.String(length=320), nullable=True)

    with op.batch_alter_table("audit_personal", schema=None) as batch_op:
        _to_text(batch_op, "detail", _json(), nullable=True)


def downgrade() -> None:
    # Sealed values do not fit the old columns' types or sizes: a downgrade is only possible
    # on a database whose rows were never sealed (see docs/deployment.md on upgrades).
    with op.batch_alter_table("audit_personal", schema=None) as batch_op:
        batch_op.alter_column(
            "detail",
            existing_type=sa.Text(),
            type_=_json(),
            postgresql_using="detail::jsonb",
        )
    with op.batch_alter_table("subject_requests", schema=None) as batch_op:
        batch_op.alter_column("address", existing_type=sa.Text(), type_=sa.String(length=320))
    with op.batch_alter_table("inbound_parts", schema=None) as batch_op:
        batch_op.alter_column(
            "payload",
            existing_type=sa.Text(),
            type_=sa.LargeBinary(),
            postgresql_using="decode(payload, 'hex')",
        )
        batch_op.drop_column("source_addr")
    if not _postgres():  # SQLite before 3.41 has no unhex(): back to bytes here
        bind = op.get_bind()
        rows = bind.execute(sa.text("SELECT id, payload FROM inbound_parts")).all()
        for row_id, payload in rows:
            bind.execute(
                sa.text("UPDATE inbound_parts SET payload = :p WHERE id = :id"),
                {"p": bytes.fromhex(payload), "id": row_id},
            )
    with op.batch_alter_table("consent_entries", schema=None) as batch_op:
        batch_op.drop_index(
            batch_op.f("ix_consent_entries_account_id_address_index_channel_purpose_seq")
        )
        batch_op.drop_column("personal_digest")
        batch_op.drop_column("personal_salt")
        batch_op.drop_column("address_index")
        batch_op.alter_column(
            "evidence",
            existing_type=sa.Text(),
            type_=_json(),
            nullable=False,
            postgresql_using="evidence::jsonb",
        )
        batch_op.alter_column(
            "address", existing_type=sa.Text(), type_=sa.String(length=320), nullable=False
        )
        batch_op.create_index(
            batch_op.f("ix_consent_entries_account_id_address_channel_purpose_seq"),
            ["account_id", "address", "channel", "purpose", "seq"],
            unique=False,
        )
    with op.batch_alter_table("opt_out_events", schema=None) as batch_op:
        batch_op.drop_column("address_index")
        batch_op.alter_column(
            "evidence", existing_type=sa.Text(), type_=_json(), postgresql_using="evidence::jsonb"
        )
        batch_op.alter_column(
            "address", existing_type=sa.Text(), type_=sa.String(length=320), nullable=False
        )
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.drop_index("uq_opt_outs_platform")
        batch_op.drop_index("uq_opt_outs_account")
        batch_op.drop_index(batch_op.f("ix_opt_outs_address_index_channel"))
        batch_op.drop_column("address_index")
        batch_op.alter_column(
            "evidence", existing_type=sa.Text(), type_=_json(), postgresql_using="evidence::jsonb"
        )
        batch_op.alter_column(
            "address", existing_type=sa.Text(), type_=sa.String(length=320), nullable=False
        )
        batch_op.create_index(
            batch_op.f("ix_opt_outs_address_channel"), ["address", "channel"], unique=False
        )
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
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_peer_index_account_id"))
        batch_op.drop_column("peer_index")
        batch_op.alter_column("to_addr", existing_type=sa.Text(), type_=sa.String(length=320))
        batch_op.alter_column("from_addr", existing_type=sa.Text(), type_=sa.String(length=400))
    op.create_index(
        "ix_messages_account_id_to_addr", "messages", ["account_id", "to_addr"], unique=False
    )
    with op.batch_alter_table("data_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_keys_account_id"))
    op.drop_table("data_keys")
