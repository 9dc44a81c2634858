"""Queue tables: `messages` and `message_parts` are vacuumed after 1 % of their rows change,
not PostgreSQL's default 20 %.

Every message is written several times on its way to a final status (accept, claim, outcome,
receipt), each write leaving a dead row version behind in the table and in every index it
changes; the claim, the receipt match and the backpressure sample read the few live rows at
the front of those indexes. Under the default, a table of 10 million messages gathers 2
million dead versions before autovacuum visits it, and those reads slow down the whole while.
Per-table storage parameters; nothing on SQLite.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Online: storage parameters take a SHARE UPDATE EXCLUSIVE lock, which reads and writes do not
# wait for; the previous version does not notice them.
online: bool = True

TABLES = ("messages", "message_parts")
PARAMETERS = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.01",
    "autovacuum_analyze_threshold": "1000",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    settings = ", ".join(f"{name} = {value}" for name, value in PARAMETERS.items())
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET ({settings})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET ({', '.join(PARAMETERS)})")
