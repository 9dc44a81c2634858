"""Privacy: the append-only, hash-chained audit log — every operator action, every access to
personal data through the API, every disclosure to an authority (policy §6, §8).

Design note.

- Chains. One chain for the platform (`chain = "platform"`: operators' actions on the platform
  itself, and disclosures) and one per account (`chain = <account id>`: what was done on or by
  that account, including operators' reads of it). Each chain has a head row
  (`audit_chain_heads`) that an append locks and moves in the caller's transaction: an
  `INSERT … ON CONFLICT DO UPDATE … RETURNING` both creates it on first use and takes its row
  lock on PostgreSQL (SQLite writers are serialised by `BEGIN IMMEDIATE`). So two accounts'
  audited reads never wait for each other; one account's wait only for each other, for the few
  milliseconds of an insert and an update. One global chain was rejected: it would put every
  audited request of every account behind one row lock on PostgreSQL.
- Entries. `seq` numbers a chain's entries 1, 2, 3, …; `hash` is the SHA-256 of the canonical
  JSON of the entry's non-personal fields (`audit_hash`), `prev_hash` included (64 zeros for
  the first). The unique (chain, seq) and (chain, prev_hash) make a fork impossible even for a
  writer that bypassed the head; the head row lets `verify_audit_chain` notice entries cut
  from the end.
- Anchor. Retention deletes a chain's oldest entries (`privacy.retention`); the head row then
  keeps the `seq` and `hash` of the newest deleted entry (`anchor_seq`, `anchor_hash`; 0 and
  64 zeros while nothing was deleted), in the transaction that deletes them. The chain is
  verified from the anchor: its first entry must be `anchor_seq + 1` with `anchor_hash` as its
  `prev_hash`, so entries cut from the start without moving the anchor are reported like any
  other removal. Moving the anchor is as privileged as moving the head.
- Personal fields are kept apart, in `audit_personal` (one row per entry at most): the actor's
  display form when it names a person (`operator:Dana Ops`, `cli:dana`) and the detail keys a
  caller marked personal (addresses, free text). The chain does not hash them, so erasure and
  retention delete those rows (`delete_audit_personal`) and every chain still verifies. What
  the chain hashes about the actor is its kind and a pseudonymous id (`operator` + `op_…`,
  `api_key` + `key_…`).
- `record_audit` is synchronous and only adds the entry to the session, as it always did (its
  callers do not await it); the chain fields are assigned when the session flushes, by a
  `before_flush` hook, so the entry commits with the action it records or not at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    and_,
    case,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    Mapped,
    Session,
    UOWTransaction,
    column_property,
    mapped_column,
    relationship,
    selectinload,
)

from amnex.clock import utc_now
from amnex.db.base import Base
from amnex.db.ids import new_id
from amnex.errors import InvalidRequest, ValidationFailed
from amnex.privacy.keys import SealedJSON

if TYPE_CHECKING:
    from amnex.db.engine import Database

PLATFORM_CHAIN = "platform"
GENESIS_HASH = "0" * 64
REASON_MAX_LENGTH = 500
# An actor kind is a short lower-case word; an id has the shape `db.ids.new_id` gives.
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,39}")
_ID = re.compile(r"[a-z]{2,8}_[0-9A-HJKMNP-TV-Z]{26}")
_ACCOUNT_ID = re.compile(r"acc_[0-9A-HJKMNP-TV-Z]{26}")


class AuditPersonal(Base):
    """The personal fields of one audit entry, outside what its chain hashes (erasable)."""

    __tablename__ = "audit_personal"

    entry_id: Mapped[str] = mapped_column(ForeignKey("audit_log.id"), primary_key=True)
    # The name of the staff member who acted, as recorded (searchable: `?actor=`); the
    # detail — addresses, free text about a recipient — sealed under the platform data key.
    actor: Mapped[str | None] = mapped_column(String(120))
    detail: Mapped[dict[str, Any] | None] = mapped_column(SealedJSON)


class AuditEntry(Base):
    """One entry of a chain (see the module's design note). Rows are only ever inserted."""

    __tablename__ = "audit_log"
    __table_args__ = (
        UniqueConstraint("chain", "seq"),
        UniqueConstraint("chain", "prev_hash"),
        Index(None, "target_type", "target_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    chain: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int]
    at: Mapped[datetime]
    actor_kind: Mapped[str] = mapped_column(String(40))
    actor_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(80))
    target_type: Mapped[str] = mapped_column(String(40))
    target_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(String(REASON_MAX_LENGTH))
    legal_basis: Mapped[str | None] = mapped_column(String(REASON_MAX_LENGTH))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    personal: Mapped[AuditPersonal | None] = relationship(lazy="raise")

    if TYPE_CHECKING:
        # Who acted, as given to `record_audit` ("operator:Dana Ops"), or, once the personal
        # fields are erased, its pseudonymous form ("operator:op_…"). Mapped below.
        actor: Mapped[str]


AuditEntry.actor = column_property(
    func.coalesce(
        select(AuditPersonal.actor)
        .where(AuditPersonal.entry_id == AuditEntry.id)
        .correlate_except(AuditPersonal)
        .scalar_subquery(),
        case(
            (AuditEntry.actor_id.is_(None), AuditEntry.actor_kind),
            else_=AuditEntry.actor_kind + ":" + AuditEntry.actor_id,
        ),
    ),
    # Set by record_audit and never written: keep the given value after a flush.
    expire_on_flush=False,
)


class AuditChainHead(Base):
    """The end of one audit chain: its last `seq` and `hash` (locked by each append), and
    its anchor: the `seq` and `hash` of the newest entry retention deleted."""

    __tablename__ = "audit_chain_heads"

    chain: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int]
    hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]
    anchor_seq: Mapped[int] = mapped_column(default=0, server_default="0")
    anchor_hash: Mapped[str] = mapped_column(
        String(64), default=GENESIS_HASH, server_default=GENESIS_HASH
    )


# Hashing


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def audit_hash(
    *,
    id: str,
    chain: str,
    seq: int,
    prev_hash: str,
    at: datetime,
    actor_kind: str,
    actor_id: str | None,
    action: str,
    target_type: str,
    target_id: str,
    account_id: str | None,
    reason: str | None,
    legal_basis: str | None,
    detail: Mapping[str, Any] | None,
) -> str:
    """SHA-256 of the canonical JSON of an entry's non-personal fields, `prev_hash` included."""
    fields = {
        "id": id,
        "chain": chain,
        "seq": seq,
        "prev_hash": prev_hash,
        "at": _timestamp(at),
        "actor": {"kind": actor_kind, "id": actor_id},
        "action": action,
        "target": {"type": target_type, "id": target_id},
        "account_id": account_id,
        "reason": reason,
        "legal_basis": legal_basis,
        "detail": dict(detail or {}),
    }
    return hashlib.sha256(_canonical_json(fields)).hexdigest()


def entry_hash(entry: AuditEntry) -> str:
    return audit_hash(
        id=entry.id,
        chain=entry.chain,
        seq=entry.seq,
        prev_hash=entry.prev_hash,
        at=entry.at,
        actor_kind=entry.actor_kind,
        actor_id=entry.actor_id,
        action=entry.action,
        target_type=entry.target_type,
        target_id=entry.target_id,
        account_id=entry.account_id,
        reason=entry.reason,
        legal_basis=entry.legal_basis,
        detail=entry.detail,
    )


# Recording


def split_actor(actor: str) -> tuple[str, str | None, bool]:
    """(kind, id, whether `actor` names a person) of an actor string.

    `api_key:key_…` → ("api_key", "key_…", False); `operator:Dana Ops` → ("operator", None,
    True) (the id is looked up at flush); `test` → ("test", None, False); anything else that
    is not `kind[:id]` is kept whole as personal, with kind "other".
    """
    kind, sep, rest = actor.partition(":")
    if not _KIND.fullmatch(kind):
        return "other", None, True
    if not sep:
        return kind, None, False
    if _ID.fullmatch(rest):
        return kind, rest, False
    return kind, None, True


def chain_of(
    target_type: str, target_id: str, detail: Mapping[str, Any], account_id: str | None
) -> str:
    """The chain an entry belongs to: the account it is about, else the platform's."""
    if account_id:
        return account_id
    if target_type == "account" and _ACCOUNT_ID.fullmatch(target_id):
        return target_id
    concerned = detail.get("account_id")
    if isinstance(concerned, str) and _ACCOUNT_ID.fullmatch(concerned):
        return concerned
    return PLATFORM_CHAIN


def _storable(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The detail as both databases store and read it back (so what is hashed is what is
    read): JSON types only, and no NUL, which PostgreSQL's JSONB refuses."""
    text = json.dumps(dict(detail), default=str).replace("\\u0000", "\\ufffd")
    stored: dict[str, Any] = json.loads(text)
    return stored


def record_audit(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
    reason: str | None = None,
    legal_basis: str | None = None,
    account_id: str | None = None,
    personal: Iterable[str] = (),
    actor_id: str | None = None,
    chain: str | None = None,
) -> AuditEntry:
    """Add an audit entry to the caller's transaction (it commits with the action it records).

    - `actor`: who acted (`operator:<name>`, `api_key:<key id>`, `cli:<user>`, …); a name in
      it is stored apart from the chain. `actor_id` names the actor's id when the string does
      not carry it (an operator's `op_…`; otherwise looked up by name at flush).
    - `detail`: what else to record; the keys named in `personal` (addresses, free text) are
      stored apart from the chain, with the actor's name, so they can be erased.
    - `account_id`: the account concerned; the entry goes to that account's chain (inferred
      from an account target or `detail["account_id"]` when not given). `chain` overrides
      the chain (`PLATFORM_CHAIN` for an account's event the account must not see).
    - `reason`, `legal_basis`: why (the operator's `X-Amnex-Reason`; a disclosure's basis).
    """
    values = _storable(detail or {})
    personal_detail = {key: values.pop(key) for key in personal if key in values}
    kind, parsed_id, names_a_person = split_actor(actor)
    in_chain = chain or chain_of(target_type, target_id, values, account_id)
    entry = AuditEntry(
        id=new_id("aud"),
        chain=in_chain,
        at=utc_now(),
        actor_kind=kind,
        actor_id=actor_id or parsed_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        account_id=account_id or (in_chain if in_chain != PLATFORM_CHAIN else None),
        reason=reason,
        legal_basis=legal_basis,
        detail=values,
        actor=actor,
    )
    if names_a_person or personal_detail:
        entry.personal = AuditPersonal(
            entry_id=entry.id,
            actor=actor[:120] if names_a_person else None,
            detail=personal_detail or None,
        )
    else:
        entry.personal = None
    session.add(entry)
    return entry


def record_disclosure(
    session: AsyncSession,
    *,
    account_id: str,
    authority: str,
    legal_basis: str,
    description: str,
    actor: str,
    actor_id: str | None = None,
) -> AuditEntry:
    """Record a disclosure of an account's data to an authority (policy §6).

    The legal basis (the subpoena, court order or statute) is required and hashed; the
    description may name people, so it is stored apart. The entry goes to the platform chain,
    not the account's: an authority's request may have to stay confidential.
    """
    if not legal_basis.strip():
        raise ValidationFailed(
            "legal_basis: a disclosure needs its legal basis", field="legal_basis"
        )
    if not authority.strip():
        raise ValidationFailed("authority: name the authority", field="authority")
    return record_audit(
        session,
        actor=actor,
        actor_id=actor_id,
        action="disclosure",
        target_type="account",
        target_id=account_id,
        account_id=account_id,
        chain=PLATFORM_CHAIN,
        legal_basis=legal_basis.strip(),
        detail={"authority": authority.strip(), "description": description},
        personal=("description",),
    )


async def record_access(db: Database, **audit: Any) -> None:
    """`record_audit` in a transaction of its own: for reads, which hold none.

    Called after the read and before the answer is sent, so that data is never served
    without its audit entry committed."""
    async with db.unit_of_work() as session:
        record_audit(session, **audit)


# Chaining, at flush


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _lock_head(session: Session, chain: str) -> tuple[int, str]:
    """The chain's (seq, hash), its head row created on first use and locked until commit."""
    heads = Base.metadata.tables[AuditChainHead.__tablename__]
    statement = _insert(session)(heads).values(
        chain=chain, seq=0, hash=GENESIS_HASH, updated_at=utc_now()
    )
    statement = statement.on_conflict_do_update(
        index_elements=[heads.c.chain], set_={"chain": statement.excluded.chain}
    ).returning(heads.c.seq, heads.c.hash)
    row = session.execute(statement).one()
    return int(row.seq), str(row.hash)


def _resolve_operators(session: Session, entries: Sequence[AuditEntry]) -> None:
    """Give `operator:<name>` entries their operator's id (what the chain hashes)."""
    wanted = {
        e.personal.actor.partition(":")[2]: e
        for e in entries
        if e.actor_kind == "operator" and e.actor_id is None and e.personal and e.personal.actor
    }
    if not wanted:
        return
    operators = Base.metadata.tables["operators"]
    rows = session.execute(
        select(operators.c.name, operators.c.id).where(operators.c.name.in_(list(wanted)))
    )
    ids = {str(name): str(id_) for name, id_ in rows}
    for entry in entries:
        if entry.actor_kind == "operator" and entry.actor_id is None and entry.personal:
            entry.actor_id = ids.get((entry.personal.actor or "").partition(":")[2])


@event.listens_for(Session, "before_flush")
def _chain_new_entries(session: Session, _context: UOWTransaction, _instances: object) -> None:
    pending = [o for o in session.new if isinstance(o, AuditEntry) and o.hash is None]
    if not pending:
        return
    _resolve_operators(session, pending)
    by_chain: dict[str, list[AuditEntry]] = {}
    for entry in pending:
        by_chain.setdefault(entry.chain, []).append(entry)
    heads = Base.metadata.tables[AuditChainHead.__tablename__]
    # Chains in one order, so two transactions appending to the same two cannot deadlock.
    for chain in sorted(by_chain):
        seq, prev = _lock_head(session, chain)
        for entry in by_chain[chain]:
            seq += 1
            entry.seq, entry.prev_hash = seq, prev
            entry.hash = prev = entry_hash(entry)
        session.execute(
            update(heads)
            .where(heads.c.chain == chain)
            .values(seq=seq, hash=prev, updated_at=utc_now())
        )


# Verifying


@dataclass(frozen=True, slots=True)
class AuditChainReport:
    valid: bool
    entries: int
    first_broken: str | None
    head_hash: str | None
    reason: str | None = None


async def _anchor(session: AsyncSession, chain: str) -> tuple[int, str]:
    head = await session.get(AuditChainHead, chain, populate_existing=True)
    return (head.anchor_seq, head.anchor_hash) if head else (0, GENESIS_HASH)


async def verify_audit_chain(
    session: AsyncSession, chain: str, *, chunk: int = 500
) -> AuditChainReport:
    """Recompute one chain: each entry's hash from its fields, each `prev_hash` against the
    entry before, the positions from the anchor on (1, 2, 3, … while retention deleted
    nothing), and the end against the head row. Reports the first entry that does not hold
    (edited, inserted, or after a removed one), or, when entries were cut from the end, no
    entry and the reason."""
    anchor = await _anchor(session, chain)
    report = await _walk(session, chain, anchor, chunk)
    # A purge that moved the anchor during the walk deleted entries the walk expected: walk
    # again from the new anchor (a purge chunk commits its deletions and the anchor together,
    # so a walk that saw one anchor throughout is conclusive).
    for _ in range(3):
        moved = await _anchor(session, chain)
        if report.valid or moved == anchor:
            break
        anchor = moved
        report = await _walk(session, chain, anchor, chunk)
    return report


async def _walk(
    session: AsyncSession, chain: str, anchor: tuple[int, str], chunk: int
) -> AuditChainReport:
    anchor_seq, anchor_hash = anchor
    expected_prev, expected_seq, count = anchor_hash, anchor_seq + 1, 0
    first_broken: str | None = None
    reason: str | None = None
    last_seq: int | None = None
    while True:
        # From the start, not from the anchor: an entry at or before the anchor is reported.
        query = select(AuditEntry).where(AuditEntry.chain == chain)
        if last_seq is not None:
            query = query.where(AuditEntry.seq > last_seq)
        rows = list(
            await session.scalars(
                query.order_by(AuditEntry.seq)
                .limit(chunk)
                .execution_options(populate_existing=True)
            )
        )
        for entry in rows:
            count += 1
            last_seq = entry.seq
            if first_broken is not None:
                continue
            if entry.seq <= anchor_seq:
                first_broken = entry.id
                reason = (
                    f"{entry.id}: entry {entry.seq} is at or before the chain's anchor "
                    f"(entry {anchor_seq}, the newest one retention deleted)"
                )
            elif entry.seq != expected_seq:
                first_broken = entry.id
                reason = f"{entry.id}: entry {expected_seq} of the chain is missing before it"
            elif entry.prev_hash != expected_prev:
                first_broken = entry.id
                reason = f"{entry.id}: prev_hash is not the hash of the entry before it"
            elif entry_hash(entry) != entry.hash:
                first_broken = entry.id
                reason = f"{entry.id}: its content does not match its hash"
            expected_prev, expected_seq = entry.hash, entry.seq + 1
        if len(rows) < chunk:
            break
    head = await session.get(AuditChainHead, chain, populate_existing=True)
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    end_seq = anchor_seq if last_seq is None else last_seq
    if first_broken is None and (head_seq, head_hash) != (end_seq, expected_prev):
        reason = (
            f"the chain head records {head_seq} entries, the log ends at entry {end_seq}: "
            "entries were removed from its end"
        )
    return AuditChainReport(
        valid=reason is None,
        entries=count,
        first_broken=first_broken,
        head_hash=head_hash if head_seq else None,
        reason=reason,
    )


# Reading


@dataclass(frozen=True, slots=True)
class AuditFilter:
    action: str | None = None
    actor: str | None = None
    after: datetime | None = None
    before: datetime | None = None


def _actor_matches(actor: str) -> ColumnElement[bool]:
    """`operator` (a kind), `api_key:key_…` (kind and id) or the actor as recorded."""
    kind, sep, rest = actor.partition(":")
    if not sep:
        return AuditEntry.actor_kind == kind
    return or_(
        and_(AuditEntry.actor_kind == kind, AuditEntry.actor_id == rest),
        AuditEntry.actor == actor,
    )


def _bad_cursor() -> InvalidRequest:
    return InvalidRequest("cursor: not a cursor this API returned", field="cursor")


async def list_audit_entries(
    session: AsyncSession,
    chain: str,
    filters: AuditFilter,
    *,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[AuditEntry], str | None]:
    """One chain's entries, newest first (by position); the cursor is the last position seen,
    so entries appended while paging never shift a page."""
    query = (
        select(AuditEntry)
        .where(AuditEntry.chain == chain)
        .options(selectinload(AuditEntry.personal))
    )
    if filters.action:
        query = query.where(AuditEntry.action == filters.action)
    if filters.actor:
        query = query.where(_actor_matches(filters.actor))
    if filters.after:
        query = query.where(AuditEntry.at >= filters.after)
    if filters.before:
        query = query.where(AuditEntry.at < filters.before)
    if cursor:
        try:
            after = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _bad_cursor() from None
        if not after.isdigit() or len(after) > 18:
            raise _bad_cursor()
        query = query.where(AuditEntry.seq < int(after))
    rows = list(await session.scalars(query.order_by(AuditEntry.seq.desc()).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        last = str(rows[limit - 1].seq).encode()
        next_cursor = base64.urlsafe_b64encode(last).decode().rstrip("=")
    return rows[:limit], next_cursor


def audit_entry_out(entry: AuditEntry, *, operator_names: bool) -> dict[str, Any]:
    """An entry as the API shows it, personal fields included (null once erased). An
    operator's name is shown to operators only (`operator_names`); accounts see its id."""
    personal = entry.personal
    name = personal.actor if personal is not None else None
    pseudonym = (
        entry.actor_kind if entry.actor_id is None else f"{entry.actor_kind}:{entry.actor_id}"
    )
    if name is not None and (operator_names or entry.actor_kind != "operator"):
        shown = name
    else:
        shown = pseudonym
    return {
        "id": entry.id,
        "chain": entry.chain,
        "seq": entry.seq,
        "at": entry.at,
        "actor": shown,
        "actor_kind": entry.actor_kind,
        "actor_id": entry.actor_id,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "account_id": entry.account_id,
        "reason": entry.reason,
        "legal_basis": entry.legal_basis,
        "detail": dict(entry.detail or {}),
        "personal": dict(personal.detail) if personal is not None and personal.detail else None,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


# Erasure and retention


async def delete_audit_personal(
    session: AsyncSession,
    *,
    entry_ids: Sequence[str] | None = None,
    before: datetime | None = None,
) -> int:
    """Delete the personal fields of the given entries, or of every entry older than `before`
    (erasure, retention). The entries and their chains stay, and still verify. Returns how
    many entries lost their personal fields."""
    if entry_ids is None and before is None:
        raise ValueError("name the entries or a time before which to delete")
    statement = delete(AuditPersonal)
    if entry_ids is not None:
        statement = statement.where(AuditPersonal.entry_id.in_(list(entry_ids)))
    if before is not None:
        statement = statement.where(
            AuditPersonal.entry_id.in_(select(AuditEntry.id).where(AuditEntry.at < before))
        )
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)
