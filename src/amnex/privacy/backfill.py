"""Privacy: seal what a database stored before addresses were sealed (migration 0009).

Design note. Migration 0009 changes column types but cannot seal: it has no keys. The first
process that starts with the keyring (`AddressKeyring.start`) runs `seal_existing`, which
walks each table in chunks of `_CHUNK` rows, one transaction each, and for every row written
before the change fills the blind index and seals the address and evidence. Each step selects
by state (`peer_index IS NULL`, …), so a run stopped halfway resumes where it was, and two
processes starting at once only repeat a chunk's work. Consent entries gain their personal
digest, which changes their hashes: each affected account's chain is re-linked from its first
entry in one transaction and the re-linking is audited. A marker row in `data_keys`
(`done:seal_existing`) records the end, so later starts cost one read. Without a master key
the same walk fills only the (unkeyed) indexes.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

from sqlalchemy import Text, not_, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from amnex.accounts.models import Account
from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.messages.models import Message
from amnex.privacy.audit import AuditPersonal, record_audit
from amnex.privacy.keys import (
    PREFIX,
    DataKey,
    blind_index,
    installed,
    prepare_keys,
    seal_address,
)
from amnex.receipts.models import InboundPart
from amnex.recipients.models import ConsentChainHead, ConsentEntry, OptOut, OptOutEvent

log = logging.getLogger(__name__)

MARKER_ID = "done:seal_existing"
_CHUNK = 500


def _seal_if_clear(account_id: str | None, stored: str | None) -> str | None:
    if stored is None or stored.startswith(PREFIX):
        return stored
    return seal_address(account_id, stored)


def _clear(stored: str) -> str:
    from amnex.privacy.keys import open_address

    return open_address(stored) or ""


async def seal_existing(db: Database) -> dict[str, int]:
    """Seal and index every row stored before migration 0009; counts per table."""
    async with db.read_session() as session:
        if await session.get(DataKey, MARKER_ID) is not None:
            return {}
        accounts = list(await session.scalars(select(Account.id)))
    await prepare_keys([*accounts, None])
    done = {
        "messages": await _messages(db),
        "opt_outs": await _opt_outs(db, OptOut),
        "opt_out_events": await _opt_outs(db, OptOutEvent),
        "consent_entries": await _consents(db),
        "inbound_parts": await _inbound_parts(db),
    }
    if installed() is not None:
        done["personal_fields"] = await _reseal_platform(db)
    # Another process may write the marker at the same moment: theirs stands.
    with contextlib.suppress(IntegrityError):
        async with db.unit_of_work() as session:
            if await session.get(DataKey, MARKER_ID) is None:
                session.add(
                    DataKey(id=MARKER_ID, purpose="marker", wrapped=None, created_at=utc_now())
                )
    if any(done.values()):
        log.info("sealed rows stored before addresses were sealed: %s", done)
        await _scrub(db, [table for table, n in done.items() if n and table in _TABLES])
    return done


_TABLES = ("messages", "opt_outs", "opt_out_events", "consent_entries", "inbound_parts")


async def _scrub(db: Database, tables: list[str]) -> None:
    """Leave no clear copy of what was just sealed: on SQLite the WAL is emptied
    (`secure_delete` has zeroed the freed cells), on PostgreSQL each table is rewritten
    (`VACUUM FULL`), so the dead row versions holding the old values are gone. Once, at the
    upgrade; a table is locked while it is rewritten."""
    from amnex.privacy.retention import truncate_wal

    if db.is_sqlite:
        await truncate_wal(db)
        return
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in tables:
            await autocommit.exec_driver_sql(f"VACUUM FULL {table}")


async def _messages(db: Database) -> int:
    count = 0
    while True:
        async with db.unit_of_work() as session:
            rows = (
                await session.execute(
                    select(Message.id, Message.account_id, Message.direction, Message.to_addr)
                    .add_columns(Message.from_addr)
                    .where(Message.peer_index.is_(None))
                    .limit(_CHUNK)
                )
            ).all()
            for row in rows:
                column = "from_addr" if row.direction == "inbound" else "to_addr"
                stored = row.from_addr if column == "from_addr" else row.to_addr
                person = _clear(stored)
                await session.execute(
                    update(Message)
                    .where(Message.id == row.id, Message.peer_index.is_(None))
                    .values(
                        {
                            "peer_index": blind_index(person),
                            column: _seal_if_clear(row.account_id, stored),
                        }
                    )
                )
        count += len(rows)
        if len(rows) < _CHUNK:
            return count


async def _opt_outs(db: Database, table: type[OptOut] | type[OptOutEvent]) -> int:
    count = 0
    while True:
        async with db.unit_of_work() as session:
            rows: list[Any] = list(
                await session.scalars(
                    select(table).where(table.address_index.is_(None)).limit(_CHUNK)
                )
            )
            for row in rows:
                stored = row.address or ""
                row.address_index = blind_index(_clear(stored))
                row.address = _seal_if_clear(row.account_id, stored)
                flag_modified(row, "evidence")  # written again: sealed
        count += len(rows)
        if len(rows) < _CHUNK:
            return count


async def _consents(db: Database) -> int:
    from amnex.recipients.service import GENESIS_HASH, consent_hash, personal_digest

    async with db.read_session() as session:
        accounts = list(
            await session.scalars(
                select(ConsentEntry.account_id)
                .where(ConsentEntry.personal_digest.is_(None))
                .distinct()
            )
        )
    count = 0
    for account_id in accounts:
        async with db.unit_of_work() as session:
            await _lock_head(session, account_id)
            entries = list(
                await session.scalars(
                    select(ConsentEntry)
                    .where(ConsentEntry.account_id == account_id)
                    .order_by(ConsentEntry.seq)
                )
            )
            prev = GENESIS_HASH
            for entry in entries:
                if entry.personal_digest is None:
                    stored = entry.address or ""
                    entry.address_index = blind_index(_clear(stored))
                    entry.address = _seal_if_clear(account_id, stored)
                    entry.personal_salt = secrets.token_hex(16)
                    flag_modified(entry, "evidence")
                    entry.personal_digest = personal_digest(
                        entry.personal_salt, entry.address_index, entry.address, entry.evidence
                    )
                    count += 1
                entry.prev_hash = prev
                entry.hash = prev = consent_hash(entry)
            head = await session.get(ConsentChainHead, account_id)
            if head is not None and entries:
                head.seq, head.hash, head.updated_at = entries[-1].seq, prev, utc_now()
            record_audit(
                session,
                actor="system",
                action="consent_ledger.relinked",
                target_type="account",
                target_id=account_id,
                detail={"entries": len(entries), "reason": "personal fields moved apart"},
                account_id=account_id,
            )
    return count


async def _lock_head(session: AsyncSession, account_id: str) -> None:
    await session.execute(
        select(ConsentChainHead).where(ConsentChainHead.account_id == account_id).with_for_update()
    )


async def _inbound_parts(db: Database) -> int:
    count = 0
    while True:
        async with db.unit_of_work() as session:
            rows = list(
                await session.scalars(
                    select(InboundPart).where(InboundPart.source_addr.is_(None)).limit(_CHUNK)
                )
            )
            for row in rows:
                row.source_addr = seal_address(None, row.source)
                row.source = blind_index(row.source)
                flag_modified(row, "payload")  # written again: now under a content key
        count += len(rows)
        if len(rows) < _CHUNK:
            return count


async def _reseal_platform(db: Database) -> int:
    """Personal fields written in clear before (audit entries, open subject requests,
    exports): written again, sealed."""
    from amnex.privacy.requests import SubjectRequest, SubjectRequestExport

    count = 0
    async with db.unit_of_work() as session:
        clear_address = type_coerce(SubjectRequest.address, Text)
        for request in await session.scalars(
            select(SubjectRequest).where(
                clear_address.is_not(None), not_(clear_address.startswith(PREFIX))
            )
        ):
            flag_modified(request, "address")
            count += 1
        for export in await session.scalars(select(SubjectRequestExport)):
            if not bytes(await _raw_export(session, export.request_id)).startswith(b"amxa1:"):
                flag_modified(export, "data")
                count += 1
    clear_detail = type_coerce(AuditPersonal.detail, Text)
    while True:
        async with db.unit_of_work() as session:
            rows = list(
                await session.scalars(
                    select(AuditPersonal)
                    .where(clear_detail.is_not(None), not_(clear_detail.startswith(PREFIX)))
                    .limit(_CHUNK)
                )
            )
            for row in rows:
                await session.execute(
                    update(AuditPersonal)
                    .where(AuditPersonal.entry_id == row.entry_id)
                    .values(detail=row.detail)
                )
        count += len(rows)
        if len(rows) < _CHUNK:
            return count


async def _raw_export(session: AsyncSession, request_id: str) -> bytes:
    from sqlalchemy import LargeBinary

    from amnex.privacy.requests import SubjectRequestExport

    raw = await session.scalar(
        select(type_coerce(SubjectRequestExport.data, LargeBinary)).where(
            SubjectRequestExport.request_id == request_id
        )
    )
    return bytes(raw or b"")
