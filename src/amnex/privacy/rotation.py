"""Privacy: re-wrapping every value sealed under the master key with a new one
(`amnex crypto rotate-master`).

Design note.

- What is sealed under the master key: the content keys (`content_keys.wrapped`, bound to the
  key id), the data keys and the blind-index key (`data_keys.wrapped`, bound to the key id)
  and the carriers' passwords (`connectors.secret`, bound to `connector:<id>`). Message
  content and addresses are under those keys, not under the master key, so they are never
  touched: rotating the master key rewrites a few rows per day of content and one per
  account, not the messages.
- No downtime. Running processes hold their keys unwrapped in memory and never unwrap a key
  twice, so re-wrapping under them changes nothing they do. A process started with the new
  key as `AMNEX_MASTER_KEY` and the old one in `AMNEX_PREVIOUS_MASTER_KEYS` opens both forms
  (`SecretBox.open`) and seals new keys under the new one, so once every process runs that
  way, this job can re-wrap at leisure.
- Chunks. Each table is walked in primary-key order, `chunk` rows per short transaction
  (as the purge does), so no table is locked for long. A row is written only if it still
  holds the value read (compare and set): a key destroyed meanwhile stays destroyed, a
  password changed meanwhile stays as the operator set it (`changed` counts them).
- Never overwrite what cannot be read. A value that opens with no configured key (sealed
  under a key this run was not given) is listed as unreadable and left as it is; the
  command then fails, so the operator adds the missing key to the previous ones and runs it
  again instead of removing a key that is still needed.
- Safe to run twice: a value already under the current key is left alone, so a second run
  re-wraps nothing. The run is recorded in the platform audit chain (`master_key.rotate`,
  the counts), never the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import InstrumentedAttribute

from amnex.carriers.models import Connector
from amnex.carriers.service import _secret_context as connector_secret_context
from amnex.db.engine import Database
from amnex.errors import MasterKeyMissing
from amnex.privacy.audit import record_audit
from amnex.privacy.content import ContentKey
from amnex.privacy.crypto import NO_KEY_DETAIL, CryptoError, SecretBox
from amnex.privacy.keys import UNKEYED, DataKey

__all__ = ["DEFAULT_CHUNK", "RotationReport", "TableRotation", "rotate_master"]

DEFAULT_CHUNK = 500


@dataclass
class TableRotation:
    """What one table held: values re-wrapped (due, in a dry run), already under the current
    key, changed by another process meanwhile, and the ids of values no key opens."""

    table: str
    rewrapped: int = 0
    current: int = 0
    changed: int = 0
    unreadable: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "rewrapped": self.rewrapped,
            "current": self.current,
            "changed": self.changed,
            "unreadable": len(self.unreadable),
        }


@dataclass
class RotationReport:
    dry_run: bool
    tables: list[TableRotation]

    @property
    def ok(self) -> bool:
        """Whether every value now opens (or, in a dry run, would open) with the current key."""
        return not any(t.unreadable for t in self.tables)

    @property
    def rewrapped(self) -> int:
        return sum(t.rewrapped for t in self.tables)

    def counts(self) -> dict[str, dict[str, int]]:
        return {t.table: t.counts() for t in self.tables}


@dataclass(frozen=True)
class _Sealed:
    """A column of values sealed under the master key, and the context each is bound to."""

    table: str
    id_column: InstrumentedAttribute[str]
    value_column: InstrumentedAttribute[str | None]
    context: Callable[[str], str]
    where: tuple[ColumnElement[bool], ...] = ()


_SEALED = (
    _Sealed("content_keys", ContentKey.id, ContentKey.wrapped, lambda key_id: key_id),
    _Sealed(
        "data_keys",
        DataKey.id,
        DataKey.wrapped,
        lambda key_id: key_id,
        # Only rows that hold a key (not markers), and not the index row of a database set
        # up without a master key, which holds none.
        (DataKey.purpose.in_(("address", "index")), DataKey.wrapped != UNKEYED),
    ),
    # The carriers module's own context function, so the two cannot drift apart.
    _Sealed("connectors", Connector.id, Connector.secret, connector_secret_context),
)


async def rotate_master(
    db: Database,
    box: SecretBox,
    *,
    actor: str = "system",
    dry_run: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> RotationReport:
    """Re-wrap every value sealed under a previous master key with `box`'s current key.

    `box` holds the new key and the previous ones (`SecretBox.from_settings`); without a
    current key it raises `MasterKeyMissing`. A dry run counts and writes nothing.
    """
    if not box.available:
        raise MasterKeyMissing(NO_KEY_DETAIL)
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    tables = [await _rotate(db, box, sealed, dry_run=dry_run, chunk=chunk) for sealed in _SEALED]
    report = RotationReport(dry_run=dry_run, tables=tables)
    if not dry_run:
        detail: dict[str, Any] = {"tables": report.counts(), "ok": report.ok}
        async with db.unit_of_work() as session:
            record_audit(
                session,
                actor=actor,
                action="master_key.rotate",
                target_type="platform",
                target_id="master_key",
                detail=detail,
            )
    return report


async def _rotate(
    db: Database, box: SecretBox, sealed: _Sealed, *, dry_run: bool, chunk: int
) -> TableRotation:
    result = TableRotation(sealed.table)
    after = ""
    while True:
        query = (
            select(sealed.id_column, sealed.value_column)
            .where(sealed.id_column > after, sealed.value_column.is_not(None), *sealed.where)
            .order_by(sealed.id_column)
            .limit(chunk)
        )
        if dry_run:
            async with db.read_session() as session:
                rows = (await session.execute(query)).all()
            for row_id, value in rows:
                if _resealed(box, sealed, row_id, value, result) is not None:
                    result.rewrapped += 1
        else:
            async with db.unit_of_work() as session:
                rows = (await session.execute(query)).all()
                for row_id, value in rows:
                    new = _resealed(box, sealed, row_id, value, result)
                    if new is None:
                        continue
                    written = await session.execute(
                        update(sealed.id_column.class_)
                        .where(sealed.id_column == row_id, sealed.value_column == value)
                        .values({sealed.value_column.key: new})
                    )
                    if getattr(written, "rowcount", 0):
                        result.rewrapped += 1
                    else:
                        result.changed += 1
        if len(rows) < chunk:
            return result
        after = rows[-1][0]


def _resealed(
    box: SecretBox, sealed: _Sealed, row_id: str, value: str | None, result: TableRotation
) -> str | None:
    """`value` under the current key when it needs re-wrapping (the caller counts it), else
    None, counted here as current or unreadable."""
    if value is None:  # destroyed: the query leaves these out
        return None
    try:
        new = box.reseal(value, context=sealed.context(row_id))
    except CryptoError:
        result.unreadable.append(row_id)
        return None
    if new is None:
        result.current += 1
    return new
