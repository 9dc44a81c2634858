"""Recipients: the suppression list and the consent ledger (callers own the transaction).

Design note.

- Opt-outs. `channel` is a channel name or "all" (never null: "all" is a value, so the
  unique indexes and the gate's look-up need no null logic). `is_suppressed` is one indexed
  query (by address) that finds the account's rows for the channel or "all" and the
  platform's; `add_opt_out` is one `INSERT … ON CONFLICT DO NOTHING RETURNING`, so a second
  STOP, even one racing the first, creates neither a row nor an event; removals are
  `DELETE … RETURNING`, so two at once record one `deleted` event.
- Consents. Each account's ledger is a hash chain (see `models.ConsentEntry`). Appending
  locks the account's chain head row and moves it in the same transaction: two grants at
  once queue instead of forking the chain, on PostgreSQL (row lock) and SQLite (one writer).
  Evidence values are limited to strings, booleans, integers and null, so the canonical JSON
  hashed at recording is byte for byte what is read back on either database.
- A grant for an address on the suppression list is refused (`consent_conflicts_with_opt_out`)
  unless the client says `override_opt_out` with a fresh opt-in (`keyword` or `web_form`,
  occurring after the opt-out); the account's opt-out for that channel is then removed in the
  same transaction. A platform-wide or all-channel opt-out is never lifted this way.

- Addresses. Every look-up compares the blind index of the normalised address
  (`privacy.keys.blind_index`); the address itself is stored sealed under the owning account's
  data key and opened only to show it (`opt_out_out`, `consent_out`). Write paths call
  `load_keys` inside the caller's transaction: the account's key exists (it is created with
  the account, or by `prepare_keys` before the transaction), so nothing waits to create one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, Select, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from amnex.clock import utc_now
from amnex.compliance.addresses import normalise_email_address, normalise_phone_number
from amnex.db.ids import looks_like_id, new_id
from amnex.errors import (
    ConsentConflictsWithOptOut,
    ConsentEvidenceMissing,
    InvalidAddress,
    InvalidRequest,
    NotFound,
    ValidationFailed,
)
from amnex.privacy.keys import blind_index, load_keys, open_address, seal_address
from amnex.recipients.models import (
    ADDRESS_LENGTH,
    ConsentChainHead,
    ConsentEntry,
    OptOut,
    OptOutEvent,
)

ALL_CHANNELS = "all"
MESSAGE_CHANNELS = ("sms", "mms", "email", "push")
OPT_OUT_CHANNELS = (*MESSAGE_CHANNELS, ALL_CHANNELS)
OPT_OUT_SOURCES = (
    "api",
    "keyword",
    "free_text_reply",
    "bounce",
    "complaint",
    "unsubscribe_link",
    "operator",
    # A data subject's restriction or objection (privacy.requests): an "all"-channel opt-out.
    "subject_request",
)
# A removal can also come from a consent that overrides the opt-out.
OPT_OUT_REMOVAL_SOURCES = (*OPT_OUT_SOURCES, "consent")
CONSENT_PURPOSES = ("transactional", "marketing")
CONSENT_ACTIONS = ("granted", "revoked")
CONSENT_SOURCES = ("web_form", "keyword", "paper", "api", "verbal")
# What a grant must carry in `evidence`, besides `text_shown`, by source.
GRANT_EVIDENCE: dict[str, tuple[str, ...]] = {
    "web_form": ("ip", "url"),
    "keyword": ("text",),
    "paper": ("document",),
    "verbal": ("agent",),
    "api": (),
}
# Sources that are a fresh, recipient-initiated opt-in: only they can override an opt-out.
OPT_IN_SOURCES = frozenset({"keyword", "web_form"})
GENESIS_HASH = "0" * 64
# A client clock slightly ahead of ours is not "the future".
OCCURRED_AT_SKEW = timedelta(seconds=60)

EVIDENCE_MAX_KEYS = 20
EVIDENCE_KEY_MAX_LENGTH = 64
EVIDENCE_VALUE_MAX_LENGTH = 2000
EVIDENCE_MAX_BYTES = 8192
TEXT_SHOWN_MAX_LENGTH = 10_000
# Integers beyond this do not survive every JSON reader unchanged.
_JSON_SAFE_INT = 2**53


# Addresses and evidence


def normalise_address(channel: str, address: str, *, field: str = "address") -> str:
    """The stored form of an address: E.164 for sms/mms, the normalised address for email
    (lower-cased), the
    token as given for push; for "all", an address with `@` is email and anything else a phone
    number. Raises InvalidAddress."""
    if channel in ("sms", "mms"):
        return normalise_phone_number(address, field=field)
    if channel == "email" or (channel == ALL_CHANNELS and "@" in address):
        if "<" in address or "," in address:
            raise InvalidAddress(
                f"{field}: one bare email address, without a display name", field=field
            )
        # Case folded: mail systems treat the local part case-insensitively in practice, and
        # an opt-out must not miss `Dave@…` because it was recorded as `dave@…`.
        return normalise_email_address(address, field=field).lower()
    if channel == ALL_CHANNELS:
        return normalise_phone_number(address, field=field)
    if channel == "push":
        token = address.strip()
        if not token or len(token) > ADDRESS_LENGTH or not token.isprintable():
            raise InvalidAddress(
                f"{field}: a device token of 1 to {ADDRESS_LENGTH} printable characters",
                field=field,
            )
        return token
    raise ValidationFailed(f"channel: unknown channel {channel!r}", field="channel")


def _normalised_filter(address: str) -> str:
    """An address typed into a list filter in its stored form; matched as given if neither."""
    try:
        return normalise_address(ALL_CHANNELS, address)
    except InvalidAddress:
        return address.strip()


def check_evidence(evidence: Mapping[str, Any] | None, *, field: str = "evidence") -> None:
    """A flat object of at most 20 keys whose values are strings, booleans, integers or null.

    Flat and without floats so that its canonical JSON, which the consent chain hashes, reads
    back identically from SQLite's JSON and PostgreSQL's JSONB.
    """
    if evidence is None:
        return
    if len(evidence) > EVIDENCE_MAX_KEYS:
        raise ValidationFailed(f"{field}: at most {EVIDENCE_MAX_KEYS} keys", field=field)
    for key, value in evidence.items():
        where = f"{field}.{key}"
        if not key or len(key) > EVIDENCE_KEY_MAX_LENGTH or "\x00" in key:
            raise ValidationFailed(
                f"{field}: keys are 1 to {EVIDENCE_KEY_MAX_LENGTH} characters", field=field
            )
        if isinstance(value, str):
            if len(value) > EVIDENCE_VALUE_MAX_LENGTH or "\x00" in value:
                raise ValidationFailed(
                    f"{where}: at most {EVIDENCE_VALUE_MAX_LENGTH} characters, no NUL",
                    field=where,
                )
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) > _JSON_SAFE_INT:
                raise ValidationFailed(f"{where}: integers up to 2**53", field=where)
        else:
            raise ValidationFailed(
                f"{where}: a string, boolean, integer or null (not {type(value).__name__})",
                field=where,
            )
    if len(_canonical_json(dict(evidence))) > EVIDENCE_MAX_BYTES:
        raise ValidationFailed(f"{field}: at most {EVIDENCE_MAX_BYTES} bytes as JSON", field=field)


def _storable(evidence: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Evidence from internal callers (a reply's text, an SMTP reply) as JSON both databases
    store: PostgreSQL's JSONB refuses the NUL character, which an inbound text may carry."""
    if evidence is None:
        return None
    text = json.dumps(dict(evidence), default=str).replace("\\u0000", "\\ufffd")
    stored: dict[str, Any] = json.loads(text)
    return stored


def _choice(value: str, allowed: Sequence[str], field: str) -> None:
    if value not in allowed:
        raise ValidationFailed(f"{field}: one of {', '.join(allowed)}", field=field)


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, for `ON CONFLICT DO NOTHING` (both databases have it)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


# Cursors


def _encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest("cursor: not a cursor this API returned", field="cursor") from exc


def _bad_cursor() -> InvalidRequest:
    return InvalidRequest("cursor: not a cursor this API returned", field="cursor")


# Opt-outs


def _owner(
    column: InstrumentedAttribute[str | None], account_id: str | None
) -> ColumnElement[bool]:
    return column.is_(None) if account_id is None else column == account_id


def _suppressing(account_id: str | None, channel: str, address: str) -> Select[OptOut]:
    owners = (
        OptOut.account_id.is_(None)
        if account_id is None
        else or_(OptOut.account_id == account_id, OptOut.account_id.is_(None))
    )
    return (
        select(OptOut)
        .where(
            OptOut.address_index == blind_index(address),
            OptOut.channel.in_((channel, ALL_CHANNELS)),
            owners,
        )
        # The most specific first: the account's own row, then its channel's row.
        .order_by(OptOut.account_id.is_(None), OptOut.channel == ALL_CHANNELS, OptOut.id)
    )


async def is_suppressed(
    session: AsyncSession, account_id: str | None, channel: str, address: str
) -> OptOut | None:
    """The opt-out that stops sending on `channel` to `address` (normalised, as a message's
    `to` is stored), if any: the account's own for that channel or "all", or a platform-wide
    one. One indexed query."""
    result = await session.scalars(_suppressing(account_id, channel, address).limit(1))
    return result.first()


def _event(
    opt_out: OptOut, action: str, source: str, evidence: dict[str, Any] | None
) -> OptOutEvent:
    return OptOutEvent(
        id=new_id("ooe"),
        opt_out_id=opt_out.id,
        account_id=opt_out.account_id,
        channel=opt_out.channel,
        address_index=opt_out.address_index,
        address=opt_out.address,
        action=action,
        source=source,
        evidence=evidence,
        at=utc_now(),
    )


async def add_opt_out(
    session: AsyncSession,
    *,
    account_id: str | None,
    channel: str,
    address: str,
    source: str,
    evidence: Mapping[str, Any] | None = None,
) -> tuple[OptOut, bool]:
    """Suppress `address` on `channel` ("all" for every channel) for the account, or platform-
    wide with `account_id=None`. Idempotent: returns the opt-out and whether it is new; only a
    new one records a `created` event."""
    _choice(channel, OPT_OUT_CHANNELS, "channel")
    _choice(source, OPT_OUT_SOURCES, "source")
    address = normalise_address(channel, address)
    address_index = blind_index(address)
    stored_evidence = _storable(evidence)
    await load_keys((account_id,))
    insert = (
        _insert(session)(OptOut)
        .values(
            id=new_id("opt"),
            account_id=account_id,
            channel=channel,
            address_index=address_index,
            address=seal_address(account_id, address),
            source=source,
            evidence=stored_evidence,
            created_at=utc_now(),
        )
        .on_conflict_do_nothing()
        .returning(OptOut)
    )
    created = (await session.scalars(insert)).first()
    if created is not None:
        session.add(_event(created, "created", source, stored_evidence))
        return created, True
    existing = await session.scalar(
        select(OptOut).where(
            _owner(OptOut.account_id, account_id),
            OptOut.channel == channel,
            OptOut.address_index == address_index,
        )
    )
    if existing is None:  # pragma: no cover - the conflicting row was committed before this read
        raise RuntimeError("opt-out insert conflicted but no opt-out was found")
    return existing, False


async def _delete_opt_outs(
    session: AsyncSession,
    where: Sequence[ColumnElement[bool]],
    source: str,
    evidence: Mapping[str, Any] | None,
) -> list[OptOut]:
    _choice(source, OPT_OUT_REMOVAL_SOURCES, "source")
    stored_evidence = _storable(evidence)
    rows = (
        await session.execute(
            delete(OptOut)
            .where(*where)
            .returning(
                OptOut.id,
                OptOut.account_id,
                OptOut.channel,
                OptOut.address_index,
                OptOut.address,
                OptOut.source,
                OptOut.evidence,
                OptOut.created_at,
            )
            .execution_options(synchronize_session=False)
        )
    ).all()
    removed = [OptOut(**row._asdict()) for row in rows]
    for opt_out in removed:
        session.add(_event(opt_out, "deleted", source, stored_evidence))
    return removed


async def remove_opt_out(
    session: AsyncSession,
    *,
    account_id: str | None,
    channel: str,
    address: str,
    source: str,
    evidence: Mapping[str, Any] | None = None,
    include_all_channels: bool = False,
) -> bool:
    """Lift the opt-out for (account or platform, channel, address) — an opt-in keyword, a
    re-subscription — recording a `deleted` event. With `include_all_channels`, the "all" row
    for the address goes too. Returns whether one existed."""
    _choice(channel, OPT_OUT_CHANNELS, "channel")
    address = normalise_address(channel, address)
    channels = (channel, ALL_CHANNELS) if include_all_channels else (channel,)
    removed = await _delete_opt_outs(
        session,
        [
            _owner(OptOut.account_id, account_id),
            OptOut.address_index == blind_index(address),
            OptOut.channel.in_(channels),
        ],
        source,
        evidence,
    )
    return bool(removed)


async def get_opt_out_or_raise(
    session: AsyncSession, account_id: str | None, opt_out_id: str
) -> OptOut:
    """The account's opt-out (or, with `account_id=None`, the platform's) by id."""
    opt_out = await session.get(OptOut, opt_out_id) if looks_like_id(opt_out_id, "opt") else None
    if opt_out is None or opt_out.account_id != account_id:
        raise NotFound(f"no opt-out {opt_out_id}")
    return opt_out


async def delete_opt_out(
    session: AsyncSession,
    account_id: str | None,
    opt_out_id: str,
    *,
    source: str,
    evidence: Mapping[str, Any] | None = None,
) -> OptOut:
    """Delete one opt-out by id (the API's DELETE); NotFound if it is not the caller's."""
    if not looks_like_id(opt_out_id, "opt"):
        raise NotFound(f"no opt-out {opt_out_id}")
    removed = await _delete_opt_outs(
        session,
        [OptOut.id == opt_out_id, _owner(OptOut.account_id, account_id)],
        source,
        evidence,
    )
    if not removed:
        raise NotFound(f"no opt-out {opt_out_id}")
    return removed[0]


@dataclass(frozen=True, slots=True)
class OptOutFilter:
    channel: str | None = None
    address: str | None = None
    source: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def list_opt_outs(
    session: AsyncSession,
    account_id: str | None,
    filters: OptOutFilter,
    *,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[OptOut], str | None]:
    """The account's opt-outs (platform-wide ones with `account_id=None`), newest first; ids
    are time-ordered, so the cursor is the last id seen."""
    query = select(OptOut).where(_owner(OptOut.account_id, account_id))
    if filters.channel:
        query = query.where(OptOut.channel == filters.channel)
    if filters.address:
        query = query.where(
            OptOut.address_index == blind_index(_normalised_filter(filters.address))
        )
    if filters.source:
        query = query.where(OptOut.source == filters.source)
    if filters.created_after:
        query = query.where(OptOut.created_at >= filters.created_after)
    if filters.created_before:
        query = query.where(OptOut.created_at < filters.created_before)
    if cursor:
        after = _decode_cursor(cursor)
        if not looks_like_id(after, "opt"):
            raise _bad_cursor()
        query = query.where(OptOut.id < after)
    rows = list(await session.scalars(query.order_by(OptOut.id.desc()).limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def list_opt_out_events(
    session: AsyncSession, account_id: str | None, opt_out_id: str | None = None
) -> list[OptOutEvent]:
    """The history of the suppression list, oldest first (of one opt-out, if given)."""
    query = select(OptOutEvent).where(_owner(OptOutEvent.account_id, account_id))
    if opt_out_id is not None:
        query = query.where(OptOutEvent.opt_out_id == opt_out_id)
    return list(await session.scalars(query.order_by(OptOutEvent.id)))


def opt_out_out(opt_out: OptOut) -> dict[str, Any]:
    return {
        "id": opt_out.id,
        "account_id": opt_out.account_id,
        "channel": opt_out.channel,
        "address": open_address(opt_out.address),
        "source": opt_out.source,
        "evidence": opt_out.evidence,
        "created_at": opt_out.created_at,
    }


# Consents


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def personal_digest(
    salt: str, address_index: str | None, address: str | None, evidence: Any
) -> str:
    """SHA-256 of an entry's personal fields (the address as stored, sealed) and its salt
    (see `ConsentEntry`)."""
    fields = {
        "salt": salt,
        "address_index": address_index,
        "address": address,
        "evidence": evidence,
    }
    return hashlib.sha256(_canonical_json(fields)).hexdigest()


def consent_hash(entry: ConsentEntry) -> str:
    """SHA-256 of the entry's canonical JSON: its non-personal fields, `prev_hash` and the
    digest of its personal fields included."""
    fields = {
        "id": entry.id,
        "account_id": entry.account_id,
        "seq": entry.seq,
        "channel": entry.channel,
        "personal_digest": entry.personal_digest,
        "purpose": entry.purpose,
        "action": entry.action,
        "source": entry.source,
        "text_shown": entry.text_shown,
        "occurred_at": _timestamp(entry.occurred_at),
        "recorded_at": _timestamp(entry.recorded_at),
        "recorded_by": entry.recorded_by,
        "prev_hash": entry.prev_hash,
    }
    return hashlib.sha256(_canonical_json(fields)).hexdigest()


def check_consent_evidence(
    action: str, source: str, text_shown: str | None, evidence: Mapping[str, Any]
) -> None:
    """A grant must carry the text the person agreed to and the evidence its source calls for
    (web_form: ip and url; keyword: text; paper: document; verbal: agent). Raises
    ConsentEvidenceMissing naming the first missing field, or ValidationFailed for a malformed
    ip or url. A revocation needs neither: it is honoured however it arrives."""
    if action != "granted":
        return
    if text_shown is None or not text_shown.strip():
        raise ConsentEvidenceMissing(
            "text_shown: a grant must record the exact consent text shown", field="text_shown"
        )
    for key in GRANT_EVIDENCE[source]:
        value = evidence.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConsentEvidenceMissing(
                f"evidence.{key}: a {source} grant must record it", field=f"evidence.{key}"
            )
    if "ip" in evidence and isinstance(evidence["ip"], str):
        try:
            ipaddress.ip_address(evidence["ip"].strip())
        except ValueError:
            raise ValidationFailed(
                "evidence.ip: an IPv4 or IPv6 address", field="evidence.ip"
            ) from None
    if "url" in evidence and isinstance(evidence["url"], str):
        url = urlsplit(evidence["url"].strip())
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValidationFailed("evidence.url: an http or https URL", field="evidence.url")


async def _check_opt_out_conflict(
    session: AsyncSession,
    *,
    account_id: str,
    channel: str,
    address: str,
    source: str,
    occurred_at: datetime,
    override_opt_out: bool,
) -> list[OptOut]:
    """The opt-outs a grant would lift, or ConsentConflictsWithOptOut."""
    blocking = list(await session.scalars(_suppressing(account_id, channel, address)))
    if not blocking:
        return []
    first = blocking[0]
    where = f"{address} is on the suppression list (opt-out {first.id}, {first.source})"
    if not override_opt_out:
        raise ConsentConflictsWithOptOut(
            f"{where}; to record a newer opt-in, send override_opt_out: true with keyword or "
            "web_form evidence",
            opt_out_id=first.id,
        )
    for opt_out in blocking:
        if opt_out.account_id is None:
            raise ConsentConflictsWithOptOut(
                f"{address} is on the platform-wide suppression list; only the operator can "
                "lift it",
                opt_out_id=opt_out.id,
            )
        if opt_out.channel != channel:
            raise ConsentConflictsWithOptOut(
                f"{address} opted out of every channel (opt-out {opt_out.id}); delete that "
                "opt-out first",
                opt_out_id=opt_out.id,
            )
        if source not in OPT_IN_SOURCES:
            raise ConsentConflictsWithOptOut(
                f"{where}; only a keyword or web_form opt-in can override it",
                opt_out_id=opt_out.id,
            )
        if occurred_at <= opt_out.created_at:
            raise ConsentConflictsWithOptOut(
                f"{where}; the opt-in must have occurred after the opt-out "
                f"({_timestamp(opt_out.created_at)})",
                opt_out_id=opt_out.id,
            )
    return blocking


async def _lock_chain_head(session: AsyncSession, account_id: str) -> ConsentChainHead:
    """The account's chain head, created on first use and locked until the caller commits."""
    await session.execute(
        _insert(session)(ConsentChainHead)
        .values(account_id=account_id, seq=0, hash=GENESIS_HASH, updated_at=utc_now())
        .on_conflict_do_nothing()
    )
    head = await session.scalar(
        select(ConsentChainHead)
        .where(ConsentChainHead.account_id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if head is None:  # pragma: no cover - inserted just above
        raise RuntimeError(f"no consent chain head for {account_id}")
    return head


async def record_consent(
    session: AsyncSession,
    *,
    account_id: str,
    channel: str,
    address: str,
    purpose: str,
    action: str,
    source: str,
    occurred_at: datetime,
    recorded_by: str,
    text_shown: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    override_opt_out: bool = False,
) -> ConsentEntry:
    """Append a grant or revocation to the account's ledger (see the module's design note)."""
    _choice(channel, MESSAGE_CHANNELS, "channel")
    _choice(purpose, CONSENT_PURPOSES, "purpose")
    _choice(action, CONSENT_ACTIONS, "action")
    _choice(source, CONSENT_SOURCES, "source")
    address = normalise_address(channel, address)
    evidence = dict(evidence or {})
    check_evidence(evidence)
    if text_shown is not None and (len(text_shown) > TEXT_SHOWN_MAX_LENGTH or "\x00" in text_shown):
        raise ValidationFailed(
            f"text_shown: at most {TEXT_SHOWN_MAX_LENGTH} characters, no NUL", field="text_shown"
        )
    check_consent_evidence(action, source, text_shown, evidence)
    now = utc_now()
    if occurred_at.tzinfo is None:
        raise ValidationFailed("occurred_at: give a time zone offset (e.g. Z)", field="occurred_at")
    if occurred_at > now + OCCURRED_AT_SKEW:
        raise ValidationFailed("occurred_at: in the future", field="occurred_at")
    occurred_at = occurred_at.astimezone(UTC)
    lifted: list[OptOut] = []
    if action == "granted":
        lifted = await _check_opt_out_conflict(
            session,
            account_id=account_id,
            channel=channel,
            address=address,
            source=source,
            occurred_at=occurred_at,
            override_opt_out=override_opt_out,
        )
    head = await _lock_chain_head(session, account_id)
    await load_keys((account_id,))
    salt = secrets.token_hex(16)
    address_index = blind_index(address)
    sealed = seal_address(account_id, address)
    entry = ConsentEntry(
        id=new_id("cns"),
        account_id=account_id,
        seq=head.seq + 1,
        channel=channel,
        address_index=address_index,
        address=sealed,
        personal_salt=salt,
        personal_digest=personal_digest(salt, address_index, sealed, evidence),
        purpose=purpose,
        action=action,
        source=source,
        text_shown=text_shown,
        evidence=evidence,
        occurred_at=occurred_at,
        recorded_at=now,
        recorded_by=recorded_by,
        prev_hash=head.hash,
    )
    entry.hash = consent_hash(entry)
    head.seq, head.hash, head.updated_at = entry.seq, entry.hash, now
    session.add(entry)
    if lifted:
        await _delete_opt_outs(
            session,
            [OptOut.id.in_([o.id for o in lifted])],
            "consent",
            {"consent_id": entry.id},
        )
    return entry


async def live_consent(
    session: AsyncSession, account_id: str, channel: str, address: str, purpose: str
) -> ConsentEntry | None:
    """The grant in force for (channel, address, purpose): the newest entry, if it is a grant.
    `address` is normalised, as a message's `to` is stored. One indexed query."""
    latest = await session.scalar(
        select(ConsentEntry)
        .where(
            ConsentEntry.account_id == account_id,
            ConsentEntry.address_index == blind_index(address),
            ConsentEntry.channel == channel,
            ConsentEntry.purpose == purpose,
        )
        .order_by(ConsentEntry.seq.desc())
        .limit(1)
    )
    return latest if latest is not None and latest.action == "granted" else None


async def get_consent_or_raise(
    session: AsyncSession, account_id: str, consent_id: str
) -> ConsentEntry:
    entry = (
        await session.get(ConsentEntry, consent_id) if looks_like_id(consent_id, "cns") else None
    )
    if entry is None or entry.account_id != account_id:
        raise NotFound(f"no consent {consent_id}")
    return entry


@dataclass(frozen=True, slots=True)
class ConsentFilter:
    channel: str | None = None
    address: str | None = None
    purpose: str | None = None
    action: str | None = None
    source: str | None = None
    recorded_after: datetime | None = None
    recorded_before: datetime | None = None


async def list_consents(
    session: AsyncSession,
    account_id: str,
    filters: ConsentFilter,
    *,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[ConsentEntry], str | None]:
    """The account's ledger, newest first (by position in the chain); the cursor is the last
    position seen."""
    query = select(ConsentEntry).where(ConsentEntry.account_id == account_id)
    if filters.channel:
        query = query.where(ConsentEntry.channel == filters.channel)
    if filters.address:
        query = query.where(
            ConsentEntry.address_index == blind_index(_normalised_filter(filters.address))
        )
    if filters.purpose:
        query = query.where(ConsentEntry.purpose == filters.purpose)
    if filters.action:
        query = query.where(ConsentEntry.action == filters.action)
    if filters.source:
        query = query.where(ConsentEntry.source == filters.source)
    if filters.recorded_after:
        query = query.where(ConsentEntry.recorded_at >= filters.recorded_after)
    if filters.recorded_before:
        query = query.where(ConsentEntry.recorded_at < filters.recorded_before)
    if cursor:
        after = _decode_cursor(cursor)
        if not after.isdigit() or len(after) > 18:
            raise _bad_cursor()
        query = query.where(ConsentEntry.seq < int(after))
    rows = list(await session.scalars(query.order_by(ConsentEntry.seq.desc()).limit(limit + 1)))
    next_cursor = _encode_cursor(str(rows[limit - 1].seq)) if len(rows) > limit else None
    return rows[:limit], next_cursor


@dataclass(frozen=True, slots=True)
class ChainReport:
    valid: bool
    entries: int
    first_broken: str | None
    head_hash: str | None
    reason: str | None = None


async def verify_chain(session: AsyncSession, account_id: str, *, chunk: int = 500) -> ChainReport:
    """Recompute the account's chain: each entry's hash from its content, each `prev_hash`
    against the entry before, the positions 1, 2, 3, …, and the end against the chain head.
    Reports the first entry that does not hold (or, when entries were removed from the end,
    no entry and the reason)."""
    expected_prev, expected_seq, count = GENESIS_HASH, 1, 0
    first_broken: str | None = None
    reason: str | None = None
    last_seq: int | None = None
    while True:
        query = select(ConsentEntry).where(ConsentEntry.account_id == account_id)
        if last_seq is not None:
            query = query.where(ConsentEntry.seq > last_seq)
        rows = list(
            await session.scalars(
                query.order_by(ConsentEntry.seq)
                .limit(chunk)
                .execution_options(populate_existing=True)
            )
        )
        for entry in rows:
            count += 1
            last_seq = entry.seq
            if first_broken is not None:
                continue
            if entry.seq != expected_seq:
                first_broken = entry.id
                reason = f"{entry.id}: entry {expected_seq} of the chain is missing before it"
            elif entry.prev_hash != expected_prev:
                first_broken = entry.id
                reason = f"{entry.id}: prev_hash is not the hash of the entry before it"
            elif consent_hash(entry) != entry.hash:
                first_broken = entry.id
                reason = f"{entry.id}: its content does not match its hash"
            elif entry.personal_salt is not None and entry.personal_digest != personal_digest(
                entry.personal_salt, entry.address_index, entry.address, entry.evidence
            ):
                first_broken = entry.id
                reason = (
                    f"{entry.id}: its address or evidence does not match the digest its hash covers"
                )
            expected_prev, expected_seq = entry.hash, entry.seq + 1
        if len(rows) < chunk:
            break
    head = await session.get(ConsentChainHead, account_id, populate_existing=True)
    if first_broken is None:
        head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        if (head_seq, head_hash) != (last_seq or 0, expected_prev):
            reason = (
                f"the chain head records {head_seq} entries, the ledger ends at entry "
                f"{last_seq or 0}: entries were removed from its end"
            )
    valid = reason is None
    return ChainReport(
        valid=valid,
        entries=count,
        first_broken=first_broken,
        head_hash=head.hash if head is not None and head.seq else None,
        reason=reason,
    )


def consent_out(entry: ConsentEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "account_id": entry.account_id,
        "seq": entry.seq,
        "channel": entry.channel,
        "address": open_address(entry.address),
        "purpose": entry.purpose,
        "action": entry.action,
        "source": entry.source,
        "text_shown": entry.text_shown,
        "evidence": None if entry.evidence is None else dict(entry.evidence),
        "occurred_at": entry.occurred_at,
        "recorded_at": entry.recorded_at,
        "recorded_by": entry.recorded_by,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
