"""Audit log: hash chains (platform and per account), chain heads, personal fields apart.

Existing audit rows are given their chain here, oldest first (by time, then id), exactly as
`privacy.audit.record_audit` would have chained them, so an upgraded database verifies. An
`operator:<name>` actor keeps its name in `audit_personal` and the chain hashes the
operator's id (looked up by name; null if the operator is gone).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from amnex.clock import utc_now
from amnex.db.base import JSONType, UTCDateTime
from amnex.privacy.audit import GENESIS_HASH, PLATFORM_CHAIN, audit_hash, chain_of, split_actor

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not online: stop the workers before applying it (`amnex db upgrade`): rewrites the audit log
# into chains the previous version does not extend.
online: bool = False

CHUNK = 1000


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


_audit = sa.table(
    "audit_log",
    sa.column("id", sa.String()),
    sa.column("at", UTCDateTime()),
    sa.column("actor", sa.String()),
    sa.column("action", sa.String()),
    sa.column("target_type", sa.String()),
    sa.column("target_id", sa.String()),
    sa.column("detail", JSONType),
    sa.column("chain", sa.String()),
    sa.column("seq", sa.Integer()),
    sa.column("actor_kind", sa.String()),
    sa.column("actor_id", sa.String()),
    sa.column("account_id", sa.String()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)
_personal = sa.table(
    "audit_personal",
    sa.column("entry_id", sa.String()),
    sa.column("actor", sa.String()),
    sa.column("detail", JSONType),
)
_heads = sa.table(
    "audit_chain_heads",
    sa.column("chain", sa.String()),
    sa.column("seq", sa.Integer()),
    sa.column("hash", sa.String()),
    sa.column("updated_at", UTCDateTime()),
)
_operators = sa.table("operators", sa.column("id", sa.String()), sa.column("name", sa.String()))


def _chain_existing_rows() -> list[dict[str, Any]]:
    """Chain the rows; returns their personal fields, to store once `audit_personal` exists
    (SQLite rebuilds `audit_log` after this, which rows referring to it would forbid)."""
    conn = op.get_bind()
    personal: list[dict[str, Any]] = []
    operator_ids = {name: id_ for id_, name in conn.execute(sa.select(_operators))}
    heads: dict[str, tuple[int, str]] = {}
    last: tuple[Any, str] | None = None
    while True:
        query = sa.select(
            _audit.c.id,
            _audit.c.at,
            _audit.c.actor,
            _audit.c.action,
            _audit.c.target_type,
            _audit.c.target_id,
            _audit.c.detail,
        ).order_by(_audit.c.at, _audit.c.id)
        if last is not None:
            query = query.where(sa.tuple_(_audit.c.at, _audit.c.id) > sa.tuple_(*last))
        rows = list(conn.execute(query.limit(CHUNK)))
        if not rows:
            break
        changes: list[dict[str, Any]] = []
        for row in rows:
            detail = dict(row.detail or {})
            kind, actor_id, names_a_person = split_actor(row.actor)
            if kind == "operator" and actor_id is None:
                actor_id = operator_ids.get(row.actor.partition(":")[2])
            chain = chain_of(row.target_type, row.target_id, detail, None)
            account_id = chain if chain != PLATFORM_CHAIN else None
            seq, prev = heads.get(chain, (0, GENESIS_HASH))
            seq += 1
            digest = audit_hash(
                id=row.id,
                chain=chain,
                seq=seq,
                prev_hash=prev,
                at=row.at,
                actor_kind=kind,
                actor_id=actor_id,
                action=row.action,
                target_type=row.target_type,
                target_id=row.target_id,
                account_id=account_id,
                reason=None,
                legal_basis=None,
                detail=detail,
            )
            heads[chain] = (seq, digest)
            changes.append(
                {
                    "b_id": row.id,
                    "chain": chain,
                    "seq": seq,
                    "actor_kind": kind,
                    "actor_id": actor_id,
                    "account_id": account_id,
                    "prev_hash": prev,
                    "hash": digest,
                }
            )
            if names_a_person:
                personal.append({"entry_id": row.id, "actor": row.actor, "detail": None})
        conn.execute(
            _audit.update()
            .where(_audit.c.id == sa.bindparam("b_id"))
            .values(
                chain=sa.bindparam("chain"),
                seq=sa.bindparam("seq"),
                actor_kind=sa.bindparam("actor_kind"),
                actor_id=sa.bindparam("actor_id"),
                account_id=sa.bindparam("account_id"),
                prev_hash=sa.bindparam("prev_hash"),
                hash=sa.bindparam("hash"),
            ),
            changes,
        )
        last = (rows[-1].at, rows[-1].id)
    now = utc_now()
    if heads:
        conn.execute(
            _heads.insert(),
            [
                {"chain": chain, "seq": seq, "hash": digest, "updated_at": now}
                for chain, (seq, digest) in heads.items()
            ],
        )
    return personal


def upgrade() -> None:
    op.create_table(
        "audit_chain_heads",
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_chain_heads")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chain", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("actor_kind", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("actor_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("account_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("legal_basis", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))

    personal = _chain_existing_rows()

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        for name, type_ in (
            ("chain", sa.String(length=40)),
            ("seq", sa.Integer()),
            ("actor_kind", sa.String(length=40)),
            ("prev_hash", sa.String(length=64)),
            ("hash", sa.String(length=64)),
        ):
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.drop_column("actor")
        batch_op.create_unique_constraint(
            batch_op.f("uq_audit_log_chain_prev_hash"), ["chain", "prev_hash"]
        )
        batch_op.create_unique_constraint(batch_op.f("uq_audit_log_chain_seq"), ["chain", "seq"])
    op.create_table(
        "audit_personal",
        sa.Column("entry_id", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["audit_log.id"], name=op.f("fk_audit_personal_entry_id_audit_log")
        ),
        sa.PrimaryKeyConstraint("entry_id", name=op.f("pk_audit_personal")),
    )
    if personal:
        op.get_bind().execute(_personal.insert(), personal)


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor", sa.String(length=120), nullable=True))
    conn = op.get_bind()
    named = sa.select(_personal.c.actor).where(
        _personal.c.entry_id == _audit.c.id, _personal.c.actor.is_not(None)
    )
    pseudonym = sa.case(
        (_audit.c.actor_id.is_(None), _audit.c.actor_kind),
        else_=_audit.c.actor_kind + ":" + _audit.c.actor_id,
    )
    conn.execute(_audit.update().values(actor=sa.func.coalesce(named.scalar_subquery(), pseudonym)))
    # Before SQLite rebuilds audit_log, which rows referring to it would forbid.
    op.drop_table("audit_personal")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_audit_log_chain_seq"), type_="unique")
        batch_op.drop_constraint(batch_op.f("uq_audit_log_chain_prev_hash"), type_="unique")
        batch_op.alter_column("actor", existing_type=sa.String(length=120), nullable=False)
        for name in (
            "hash",
            "prev_hash",
            "legal_basis",
            "reason",
            "account_id",
            "actor_id",
            "actor_kind",
            "seq",
            "chain",
        ):
            batch_op.drop_column(name)
    op.drop_table("audit_chain_heads")
