"""Storage: running Alembic migrations from code (`amnex db upgrade`, `amnex dev`, tests).

Design note: upgrades while processes run. Every migration module declares `online`: True
when processes of the previous version keep working correctly on the schema it leaves
(additive changes: new tables, columns with defaults or NULL, triggers the old code cannot
set off), False otherwise. `amnex db upgrade` refuses a pending migration that is not online
while workers are alive (`bind_lease_workers`, where every worker announces itself), unless
forced. On PostgreSQL each statement waits at most `lock_timeout_s` for its table lock, so
a migration queued behind a long transaction never stalls the workers' writes queued behind
it; the whole upgrade (one transaction) is then rolled back and tried again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from amnex.db.engine import Database

log = logging.getLogger(__name__)

# PostgreSQL's SQLSTATE for `lock_timeout` expiring (lock_not_available).
LOCK_NOT_AVAILABLE = "55P03"

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@dataclass(frozen=True)
class Migration:
    revision: str
    title: str  # the first line of the module's docstring
    online: bool  # safe while processes of the previous version run


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def all_migrations() -> list[Migration]:
    """Every migration, oldest first."""
    migrations = [
        Migration(
            revision=script.revision,
            title=(script.doc or "").strip().splitlines()[0] if script.doc else "",
            online=bool(getattr(script.module, "online", False)),
        )
        for script in script_directory().walk_revisions()
    ]
    return list(reversed(migrations))


async def current_revision(db: Database) -> str | None:
    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.read_engine.connect() as conn:
        return await conn.run_sync(_current)


class UnknownRevision(ValueError):
    """A revision this version's migrations do not contain (a typo, or a database upgraded
    by a newer version)."""


def migrations_after(current: str | None, target: str = "head") -> list[Migration]:
    """The migrations an upgrade from `current` to `target` applies, oldest first.

    `target` is `head` (or `heads`) or a revision id; raises UnknownRevision for anything
    else, and for a `current` this version does not know."""
    every = all_migrations()
    revisions = [m.revision for m in every]
    if current is not None and current not in revisions:
        raise UnknownRevision(
            f"the database is at revision {current}, which this version of Amnex does not "
            "know: it was upgraded by a newer version"
        )
    if target not in ("head", "heads") and target not in revisions:
        raise UnknownRevision(
            f"unknown revision {target!r}; known: {', '.join(revisions)} (or head)"
        )
    start = revisions.index(current) + 1 if current is not None else 0
    end = len(every) if target in ("head", "heads") else revisions.index(target) + 1
    return every[start:end]


async def live_workers(db: Database, *, now: datetime) -> list[str]:
    """Owners of workers alive now (their presence in `bind_lease_workers` not expired);
    empty on a schema from before that table, whose workers cannot be seen."""
    from amnex.carriers.leases import BindLeaseWorker

    def _has_table(connection: Connection) -> bool:
        return inspect(connection).has_table("bind_lease_workers")

    async with db.read_engine.connect() as conn:
        if not await conn.run_sync(_has_table):
            return []
    async with db.read_session() as session:
        rows = await session.scalars(
            select(BindLeaseWorker.owner)
            .where(BindLeaseWorker.expires_at > now)
            .order_by(BindLeaseWorker.owner)
        )
        return list(rows)


def upgrade_refusal(pending: list[Migration], workers: list[str]) -> str | None:
    """Why applying `pending` now is unsafe (a migration that is not online while workers
    run), or None."""
    offline = [m for m in pending if not m.online]
    if not offline or not workers:
        return None
    names = ", ".join(f"{m.revision} ({m.title})" for m in offline)
    return (
        f"{len(workers)} worker(s) running ({', '.join(workers)}), and these migrations are "
        f"not safe while processes of the previous version run: {names}. Stop the workers "
        "(they give their work back) and the API processes (this check cannot see them), "
        "then run `amnex db upgrade` again (or pass --force)."
    )


async def upgrade_database(
    db: Database,
    revision: str = "head",
    *,
    lock_timeout_s: float = 5.0,
    attempts: int = 6,
    retry_pause_s: float = 2.0,
) -> None:
    """Bring the schema up to `revision` in one transaction (PostgreSQL DDL is transactional).

    On PostgreSQL a statement that cannot have its lock within `lock_timeout_s` rolls the
    upgrade back, which is tried again after `retry_pause_s`, `attempts` times in all."""

    def _upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    postgres = db.engine.dialect.name == "postgresql"
    for attempt in range(1, attempts + 1):
        try:
            async with db.engine.begin() as conn:
                if postgres:
                    timeout_ms = max(1, int(lock_timeout_s * 1000))
                    await conn.execute(text(f"SET LOCAL lock_timeout = {timeout_ms}"))
                await conn.run_sync(_upgrade)
            return
        except DBAPIError as exc:
            if not postgres or _sqlstate(exc) != LOCK_NOT_AVAILABLE or attempt == attempts:
                raise
            log.warning(
                "migration waited %.1f s for a table lock (try %d of %d); rolled back, "
                "trying again",
                lock_timeout_s,
                attempt,
                attempts,
            )
            await asyncio.sleep(retry_pause_s)


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    for name in ("sqlstate", "pgcode"):
        code = getattr(orig, name, None)
        if isinstance(code, str):
            return code
    cause = getattr(orig, "__cause__", None)
    code = getattr(cause, "sqlstate", None)
    return code if isinstance(code, str) else None


async def downgrade_database(db: Database, revision: str) -> None:
    def _downgrade(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_downgrade)


async def schema_is_current(db: Database) -> bool:
    """True when the database is at the newest migration (serve and worker check at start)."""
    return await current_revision(db) == script_directory().get_current_head()
