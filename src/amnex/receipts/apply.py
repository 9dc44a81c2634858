"""Receipts: applying delivery receipts and storing inbound messages (idempotent, batched).

Design note. The connector's `on_deliver` hands every receipt and inbound message to
`receipts.writer`, which applies a batch of them in ONE transaction and only then lets the
session answer `deliver_sm_resp`: what the SMSC has been told we have, we have.

A receipt finds its part through `dlr.receipt_id_key` (leading zeros and case aside, and
in the id format the connector declares).
A part that is already final is not changed again (a duplicate receipt is counted and
ignored). A message becomes `delivered` only when every one of its parts is; the first part
that fails decides the message's failure, and no later success overwrites it. A receipt
that matches no part yet is stored in `pending_receipts` — it may have overtaken its
submit_sm_resp — and applied when the part is recorded (`apply_pending_for_parts`) or by the
sweeper (`match_pending_receipts`); it is dropped only after `unmatched_receipt_ttl_s`.

Inbound messages go to the account that owns the destination number. Parts of a
multi-part message are kept in `inbound_parts` until the last one arrives; then the whole
text is stored as one inbound message and the parts are deleted, in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.models import Sender
from amnex.db.bulk import insert_rows, update_rows
from amnex.db.ids import new_id
from amnex.db.lists import in_list
from amnex.db.reads import KeyedRead
from amnex.messages.models import Message, MessageEvent, MessagePart
from amnex.messages.service import address_columns, event_row, transition
from amnex.messages.status import Status, check_transition
from amnex.metrics import (
    INBOUND_MESSAGES,
    MESSAGES_DELIVERED,
    RECEIPT_LAG,
    RECEIPT_TIMEOUTS,
    RECEIPTS,
)
from amnex.privacy.keys import blind_index, open_address, prepare_keys, seal_address
from amnex.privacy.retention import empty_delivered_content
from amnex.receipts.dlr import Receipt, ReceiptIdFormat, canonical_id, receipt_id_key
from amnex.receipts.inbound import InboundFragment, decode_payload, fragment_key, reassemble
from amnex.receipts.models import InboundPart, PendingReceipt
from amnex.receipts.replies import act_on_replies

log = logging.getLogger(__name__)

PART_FINAL = frozenset({"delivered", "undelivered", "failed"})
# A stored receipt that matches only a final part is a duplicate once it is this old: any
# submit it could belong to has been recorded by then.
DUPLICATE_AFTER_S = 600.0


@dataclass(frozen=True, slots=True)
class ReceivedReceipt:
    connector_id: str
    receipt: Receipt
    # The canonical submit id this receipt stands for (`dlr.receipt_id_key`).
    key: str

    @classmethod
    def of(
        cls, connector_id: str, receipt: Receipt, id_format: ReceiptIdFormat = "as_is"
    ) -> ReceivedReceipt:
        return cls(connector_id, receipt, receipt_id_key(receipt.provider_message_id, id_format))


@dataclass(frozen=True, slots=True)
class ReceivedInbound:
    connector_id: str
    fragment: InboundFragment


# ---------------------------------------------------------------------------------------------
# The pure rule: what a message's parts say about the message


@dataclass(slots=True)
class PartState:
    """A `message_parts` row as the receipt path reads and changes it (no ORM object)."""

    message_id: str
    part: int
    connector_id: str
    provider_message_id: str
    id_key: str
    status: str
    error_code: str | None
    provider_error_code: str | None
    updated_at: datetime


_PART_COLUMNS = (
    MessagePart.message_id,
    MessagePart.part,
    MessagePart.connector_id,
    MessagePart.provider_message_id,
    MessagePart.id_key,
    MessagePart.status,
    MessagePart.error_code,
    MessagePart.provider_error_code,
    MessagePart.updated_at,
)


def message_outcome(parts: Sequence[PartState]) -> tuple[Status, PartState | None] | None:
    """The final status the parts decide, with the part that decided a failure; None while
    some part is still waiting for its receipt and none has failed.

    The earliest failed part decides (by when it failed, then by part number), so a
    failure is never hidden by another part's later success.
    """
    failed = [p for p in parts if p.status in ("undelivered", "failed")]
    if failed:
        first = min(failed, key=lambda p: (p.updated_at, p.part))
        return Status(first.status), first
    if parts and all(p.status == "delivered" for p in parts):
        return Status.DELIVERED, None
    return None


# ---------------------------------------------------------------------------------------------
# Receipts


def _best_part(candidates: Iterable[PartState], item: ReceivedReceipt) -> PartState | None:
    """Among parts whose key matches: the same connector, a part still waiting for its
    receipt, the exact id, the newest — an SMSC that reuses ids must not send a new
    message's receipt to an old part."""
    raw = item.receipt.provider_message_id
    ranked = sorted(
        candidates,
        key=lambda p: (
            p.connector_id != item.connector_id,
            p.status in PART_FINAL,
            p.provider_message_id != raw,
            -p.updated_at.timestamp(),
        ),
    )
    return ranked[0] if ranked else None


_PARTS_BY_KEY = KeyedRead(_PART_COLUMNS, key=MessagePart.id_key)
_PARTS_OF_MESSAGES = KeyedRead(_PART_COLUMNS, key=MessagePart.message_id)
# The messages whose parts a receipt batch settles, locked in id order.
_SETTLED_MESSAGES = KeyedRead(
    (Message.id, Message.account_id, Message.channel, Message.status, Message.event_seq),
    key=Message.id,
    order_by=(Message.id,),
    for_update=True,
)


async def _load_parts(
    session: AsyncSession, read: KeyedRead, values: Sequence[str]
) -> list[PartState]:
    return [PartState(*row) for row in await read.rows(session, values)]


async def _apply_matched(
    session: AsyncSession,
    matches: list[tuple[ReceivedReceipt, PartState]],
    *,
    now: datetime,
) -> tuple[int, int, int]:
    """Apply receipts to their parts and settle the messages, in a few statements.

    Returns (applied, duplicates, intermediate).
    """
    if not matches:
        return 0, 0, 0
    message_ids = sorted({part.message_id for _, part in matches})
    # Lock the messages first, in id order, so that two workers settling parts of the same
    # message (receipts may come on different binds) take turns instead of deadlocking.
    messages = {row.id: row for row in await _SETTLED_MESSAGES.rows(session, message_ids)}
    all_parts: dict[str, list[PartState]] = {}
    by_key: dict[tuple[str, int], PartState] = {}
    for part in await _load_parts(session, _PARTS_OF_MESSAGES, message_ids):
        all_parts.setdefault(part.message_id, []).append(part)
        by_key[(part.message_id, part.part)] = part
    applied = duplicates = intermediate = 0
    touched: dict[str, dict[str, Any]] = {}
    changed: dict[tuple[str, int], PartState] = {}
    for item, found in matches:
        part = by_key.get((found.message_id, found.part), found)
        receipt = item.receipt
        if part.status in PART_FINAL:
            duplicates += 1
            continue
        if receipt.status is None:
            intermediate += 1
            continue
        # Until its final receipt a part's updated_at is its submit time.
        RECEIPT_LAG.observe(max(0.0, (now - part.updated_at).total_seconds()))
        part.status = receipt.status
        part.error_code = receipt.error_code
        part.provider_error_code = receipt.raw_error[:40] if receipt.raw_error else None
        part.updated_at = now
        changed[(part.message_id, part.part)] = part
        applied += 1
        touched.setdefault(part.message_id, {"part": part.part, "state": receipt.state})
    if changed:
        await update_rows(
            session,
            MessagePart,
            [
                {
                    "message_id": p.message_id,
                    "part": p.part,
                    "status": p.status,
                    "error_code": p.error_code,
                    "provider_error_code": p.provider_error_code,
                    "updated_at": p.updated_at,
                }
                for p in changed.values()
            ],
            key=("message_id", "part"),
        )
    settled: dict[str, list[dict[str, Any]]] = {"delivered": [], "failed": []}
    events: list[dict[str, Any]] = []
    for message_id, detail in touched.items():
        message = messages.get(message_id)
        if message is not None:
            _settle(message, all_parts.get(message_id, []), now, detail, settled, events)
    if settled["delivered"]:
        account_of = {message_id: row.account_id for message_id, row in messages.items()}
        await empty_delivered_content(session, settled["delivered"], account_of, now)
    for changes in settled.values():
        if changes:
            await update_rows(session, Message, changes, key=("id",))
    if events:
        await insert_rows(session, MessageEvent, events)
    return applied, duplicates, intermediate


def _settle(
    message: Any,
    parts: list[PartState],
    now: datetime,
    detail: dict[str, Any],
    settled: dict[str, list[dict[str, Any]]],
    events: list[dict[str, Any]],
) -> None:
    """Add the message's change and event, if its parts now decide its final status."""
    if message.status != Status.SENT:
        # Already final (an earlier part failed, or receipt_timeout came first): the part
        # rows keep what the carrier said; the message does not change again.
        if message.status in (Status.UNDELIVERED, Status.FAILED, Status.DELIVERED):
            RECEIPTS.labels(outcome="late").inc()
        return
    outcome = message_outcome(parts)
    if outcome is None:
        return
    status, failed_part = outcome
    check_transition(Status.SENT, status)
    seq = message.event_seq + 1
    base = {"id": message.id, "status": status.value, "event_seq": seq, "updated_at": now}
    if failed_part is None:
        events.append(
            event_row(
                message.id,
                message.account_id,
                seq,
                status,
                at=now,
                detail={"parts": len(parts), **detail},
            )
        )
        settled["delivered"].append({**base, "delivered_at": now, "next_attempt_at": None})
        MESSAGES_DELIVERED.labels(channel=message.channel).inc()
        return
    code = failed_part.error_code or "undeliverable"
    events.append(
        event_row(
            message.id,
            message.account_id,
            seq,
            status,
            at=now,
            error_code=code,
            detail={
                "part": failed_part.part,
                "parts": len(parts),
                "provider_error_code": failed_part.provider_error_code,
            },
        )
    )
    settled["failed"].append(
        {
            **base,
            "error_code": code,
            "error_message": (
                f"the carrier reported part {failed_part.part} of {len(parts)} {failed_part.status}"
                if len(parts) > 1
                else f"the carrier reported the message {failed_part.status}"
            ),
            "provider_error_code": failed_part.provider_error_code,
            "failed_at": now,
            "next_attempt_at": None,
        }
    )


async def _find_parts(
    session: AsyncSession, items: Sequence[ReceivedReceipt]
) -> list[PartState | None]:
    keys = sorted({item.key for item in items})
    by_key: dict[str, list[PartState]] = {}
    if keys:
        for part in await _load_parts(session, _PARTS_BY_KEY, keys):
            by_key.setdefault(part.id_key, []).append(part)
    return [_best_part(by_key.get(item.key, ()), item) for item in items]


async def apply_receipts(
    session: AsyncSession, items: Sequence[ReceivedReceipt], *, now: datetime
) -> None:
    """Apply receipts; keep those that match no part yet in `pending_receipts`."""
    parts = await _find_parts(session, items)
    # A receipt whose only match is a part already final may be a duplicate, or belong to
    # a message whose submit is not recorded yet under a reused id: it waits as pending,
    # and the sweeper counts it a duplicate once that can no longer be (DUPLICATE_AFTER_S).
    matches = [
        (item, part)
        for item, part in zip(items, parts, strict=True)
        if part is not None and part.status not in PART_FINAL
    ]
    applied, duplicates, intermediate = await _apply_matched(session, matches, now=now)
    pending = [
        item
        for item, part in zip(items, parts, strict=True)
        if part is None or part.status in PART_FINAL
    ]
    for item in pending:
        receipt = item.receipt
        session.add(
            PendingReceipt(
                connector_id=item.connector_id,
                provider_message_id=receipt.provider_message_id[:120],
                id_key=item.key[:120],
                state=receipt.state[:16],
                status=receipt.status,
                error_code=receipt.error_code,
                raw_error=(receipt.raw_error or None) and receipt.raw_error[:40],
                done_at=receipt.done_date,
                received_at=now,
            )
        )
    _count(applied=applied, duplicate=duplicates, intermediate=intermediate, pending=len(pending))


def _count(**outcomes: int) -> None:
    for outcome, n in outcomes.items():
        if n:
            RECEIPTS.labels(outcome=outcome).inc(n)


def _as_received(row: PendingReceipt) -> ReceivedReceipt:
    return ReceivedReceipt(
        connector_id=row.connector_id,
        key=row.id_key,
        receipt=Receipt(
            provider_message_id=row.provider_message_id,
            state=row.state,
            status=row.status,  # type: ignore[arg-type]  # stored from a Receipt
            error_code=row.error_code,
            raw_error=row.raw_error,
            done_date=row.done_at,
        ),
    )


async def _apply_pending_rows(
    session: AsyncSession, rows: Sequence[PendingReceipt], *, now: datetime
) -> int:
    if not rows:
        return 0
    items = [_as_received(row) for row in rows]
    parts = await _find_parts(session, items)
    settled_before = now - timedelta(seconds=DUPLICATE_AFTER_S)

    def usable(row: PendingReceipt, part: PartState | None) -> bool:
        if part is None:
            return False
        return part.status not in PART_FINAL or row.received_at < settled_before

    matched_rows = [row for row, part in zip(rows, parts, strict=True) if usable(row, part)]
    matches = [
        (item, part)
        for row, item, part in zip(rows, items, parts, strict=True)
        if part is not None and usable(row, part)
    ]
    # Oldest first: an ENROUTE stored before a DELIVRD must not be applied after it.
    await _apply_matched(session, matches, now=now)
    if matched_rows:
        await session.execute(
            delete(PendingReceipt).where(
                in_list(session, PendingReceipt.id, [r.id for r in matched_rows])
            )
        )
        _count(matched_later=len(matched_rows))
    return len(matched_rows)


async def apply_pending_for_parts(
    session: AsyncSession, provider_ids: Iterable[str], *, now: datetime
) -> int:
    """Receipts that arrived before these provider ids were recorded: apply them now."""
    keys = {canonical_id(pid)[:120] for pid in provider_ids}
    if not keys:
        return 0
    rows = list(
        await session.scalars(
            select(PendingReceipt)
            .where(in_list(session, PendingReceipt.id_key, sorted(keys)))
            .order_by(PendingReceipt.id)
        )
    )
    return await _apply_pending_rows(session, rows, now=now)


async def match_pending_receipts(
    session: AsyncSession, *, now: datetime, ttl_s: float, limit: int = 500, after_id: int = 0
) -> tuple[int, int, int]:
    """The sweeper's pass over stored receipts with ids above `after_id`: match those whose
    parts now exist, drop the expired. Returns (matched, expired, last id seen — 0 when the
    end was reached, so the next pass starts again from the beginning)."""
    rows = list(
        await session.scalars(
            select(PendingReceipt)
            .where(PendingReceipt.id > after_id)
            .order_by(PendingReceipt.id)
            .limit(limit)
        )
    )
    matched = await _apply_pending_rows(session, rows, now=now)
    cutoff = now - timedelta(seconds=ttl_s)
    expired = list(
        await session.scalars(
            select(PendingReceipt.id).where(PendingReceipt.received_at < cutoff).limit(limit)
        )
    )
    if expired:
        await session.execute(delete(PendingReceipt).where(PendingReceipt.id.in_(expired)))
        log.warning("dropped %d receipts that matched no message for %.0f s", len(expired), ttl_s)
        _count(expired=len(expired))
    last_id = rows[-1].id if len(rows) == limit else 0
    return matched, len(expired), last_id


# ---------------------------------------------------------------------------------------------
# Submitted parts and receipt deadlines


def part_rows(
    message_id: str, connector_id: str, provider_ids: Sequence[str], *, now: datetime
) -> list[dict[str, Any]]:
    """`message_parts` rows for the parts a carrier accepted, waiting for their receipts."""
    return [
        {
            "message_id": message_id,
            "part": number,
            "connector_id": connector_id,
            "provider_message_id": provider_id[:120],
            "id_key": canonical_id(provider_id)[:120],
            "status": "sent",
            "error_code": None,
            "provider_error_code": None,
            "updated_at": now,
        }
        for number, provider_id in enumerate(provider_ids, start=1)
    ]


def receipt_deadline(
    *, sent_at: datetime, expires_at: datetime | None, wait_s: float, grace_s: float
) -> datetime:
    """When a `sent` message without a receipt becomes `undelivered` (`receipt_timeout`)."""
    base = expires_at if expires_at is not None and expires_at > sent_at else None
    return (base or sent_at + timedelta(seconds=wait_s)) + timedelta(seconds=grace_s)


async def expire_receipt_waits(session: AsyncSession, *, now: datetime, limit: int = 500) -> int:
    """Sent messages whose receipt deadline passed become `undelivered` (`receipt_timeout`)."""
    messages = list(
        await session.scalars(
            select(Message)
            .where(Message.status == Status.SENT.value, Message.next_attempt_at <= now)
            .order_by(Message.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for message in messages:
        transition(
            session,
            message,
            Status.UNDELIVERED,
            at=now,
            error_code="receipt_timeout",
            detail={"sent_at": message.sent_at.isoformat() if message.sent_at else None},
        )
        message.error_code = "receipt_timeout"
        message.error_message = "no delivery receipt arrived within the validity period and grace"
        message.failed_at = now
        message.next_attempt_at = None
    if messages:
        RECEIPT_TIMEOUTS.inc(len(messages))
    return len(messages)


# ---------------------------------------------------------------------------------------------
# Inbound messages


async def owners_of_numbers(session: AsyncSession, numbers: Iterable[str]) -> dict[str, str]:
    """Number → account id, for the numbers some account owns (SMS senders)."""
    wanted = sorted(set(numbers))
    if not wanted:
        return {}
    rows = await session.execute(
        select(Sender.address, Sender.account_id).where(
            Sender.channel == "sms", Sender.address.in_(wanted)
        )
    )
    return {row[0]: row[1] for row in rows}


def _inbound_message(
    session: AsyncSession,
    *,
    account_id: str,
    source: str,
    destination: str,
    payload: bytes,
    data_coding: int,
    segments: int,
    connector_id: str,
    now: datetime,
    incomplete: bool = False,
) -> Message:
    decoded = decode_payload(payload, data_coding)
    meta: dict[str, Any] = {}
    if not decoded.lossless:
        meta["data_coding"] = data_coding
        meta["body_format"] = "hex" if decoded.encoding == "binary" else "text_with_replacements"
        INBOUND_MESSAGES.labels(outcome="undecodable").inc()
    if incomplete:
        meta["incomplete"] = True
    message = Message(
        id=new_id("msg"),
        account_id=account_id,
        channel="sms",
        direction="inbound",
        **address_columns(account_id, direction="inbound", from_addr=source, to_addr=destination),
        category="transactional",
        status=Status.DELIVERED.value,
        body=decoded.text,
        segments=segments,
        encoding=decoded.encoding,
        provider_detail={"connector_id": connector_id},
        meta=meta or None,
        created_at=now,
        updated_at=now,
        delivered_at=now,
        attempts=0,
        event_seq=1,
    )
    session.add(message)
    session.add(
        MessageEvent(
            message_id=message.id,
            account_id=account_id,
            seq=1,
            status=Status.DELIVERED.value,
            at=now,
            detail={"direction": "inbound"},
        )
    )
    INBOUND_MESSAGES.labels(outcome="stored").inc()
    return message


async def store_inbound(
    session: AsyncSession, items: Sequence[ReceivedInbound], *, now: datetime
) -> list[bool]:
    """Store inbound messages and parts; False for an item whose destination no account owns
    (the SMSC is told the destination is invalid; nothing is kept)."""
    owners = await owners_of_numbers(session, (item.fragment.destination for item in items))
    await prepare_keys([*owners.values(), None])
    stored: list[bool] = []
    created: list[Message] = []
    for item in items:
        fragment = item.fragment
        account_id = owners.get(fragment.destination)
        if account_id is None:
            INBOUND_MESSAGES.labels(outcome="unknown_destination").inc()
            stored.append(False)
            continue
        stored.append(True)
        if not fragment.is_part:
            message = _inbound_message(
                session,
                account_id=account_id,
                source=fragment.source,
                destination=fragment.destination,
                payload=fragment.payload,
                data_coding=fragment.data_coding,
                segments=1,
                connector_id=item.connector_id,
                now=now,
            )
            created.append(message)
            continue
        whole = await _store_part(session, item, account_id=account_id, now=now)
        if whole is not None:
            created.append(whole)
    # Keywords (STOP, START, HELP, "please stop texting me") act in this same transaction.
    await act_on_replies(session, created, now=now)
    return stored


async def _store_part(
    session: AsyncSession, item: ReceivedInbound, *, account_id: str, now: datetime
) -> Message | None:
    """Store one part; the inbound message once this part completes it, else None."""
    fragment = item.fragment
    source, destination, reference, total = fragment_key(fragment)
    source_index = blind_index(source)
    await session.flush()  # parts added earlier in this batch are visible to the query
    rows = list(
        await session.scalars(
            select(InboundPart).where(
                InboundPart.connector_id == item.connector_id,
                InboundPart.source == source_index,
                InboundPart.destination == destination,
                InboundPart.reference == reference,
                InboundPart.total == total,
            )
        )
    )
    if any(row.sequence == fragment.sequence for row in rows):
        INBOUND_MESSAGES.labels(outcome="duplicate_part").inc()
        return None
    row = InboundPart(
        connector_id=item.connector_id,
        source=source_index,
        source_addr=seal_address(None, source),
        destination=destination,
        reference=reference,
        total=total,
        sequence=fragment.sequence,
        data_coding=fragment.data_coding,
        payload=fragment.payload.hex(),
        received_at=now,
    )
    session.add(row)
    rows.append(row)
    fragments = [_as_fragment(r) for r in rows]
    payload = reassemble(fragments)
    if payload is None:
        INBOUND_MESSAGES.labels(outcome="part").inc()
        return None
    first = min(rows, key=lambda r: r.sequence)
    message = _inbound_message(
        session,
        account_id=account_id,
        source=source,
        destination=destination,
        payload=payload,
        data_coding=first.data_coding,
        segments=total,
        connector_id=item.connector_id,
        now=now,
    )
    await session.flush()
    for r in rows:
        await session.delete(r)
    return message


def _as_fragment(row: InboundPart) -> InboundFragment:
    return InboundFragment(
        source=open_address(row.source_addr) or "",
        destination=row.destination,
        payload=_payload(row),
        data_coding=row.data_coding,
        reference=row.reference,
        total=row.total,
        sequence=row.sequence,
    )


def _payload(row: InboundPart) -> bytes:
    # Hex under a content key; a part whose key was destroyed (it outlived its period by far)
    # reads as nothing rather than stopping the sweep.
    return bytes.fromhex(row.payload or "")


async def expire_inbound_parts(session: AsyncSession, *, now: datetime, ttl_s: float) -> int:
    """Parts whose siblings never came: store what arrived as one message, marked incomplete."""
    cutoff = now - timedelta(seconds=ttl_s)
    stale = list(
        await session.scalars(
            select(InboundPart).where(InboundPart.received_at < cutoff).limit(500)
        )
    )
    groups: dict[tuple[str, str, str, int, int], list[InboundPart]] = {}
    for row in stale:
        key = (row.connector_id, row.source, row.destination, row.reference, row.total)
        groups.setdefault(key, []).append(row)
    if not groups:
        return 0
    owners = await owners_of_numbers(session, (key[2] for key in groups))
    await prepare_keys([*owners.values(), None])
    for (connector_id, source_index, destination, _, total), rows in groups.items():
        siblings = list(
            await session.scalars(
                select(InboundPart).where(
                    InboundPart.connector_id == connector_id,
                    InboundPart.source == source_index,
                    InboundPart.destination == destination,
                    InboundPart.reference == rows[0].reference,
                    InboundPart.total == total,
                )
            )
        )
        siblings.sort(key=lambda r: r.sequence)
        source = open_address(siblings[0].source_addr) or ""
        account_id = owners.get(destination)
        complete = reassemble([_as_fragment(r) for r in siblings])
        if account_id is not None and complete is not None:
            # Every part arrived, but in transactions that did not see each other (two
            # workers at once on PostgreSQL): the whole message, not an incomplete one.
            _inbound_message(
                session,
                account_id=account_id,
                source=source,
                destination=destination,
                payload=complete,
                data_coding=siblings[0].data_coding,
                segments=total,
                connector_id=connector_id,
                now=now,
            )
        elif account_id is not None:
            _inbound_message(
                session,
                account_id=account_id,
                source=source,
                destination=destination,
                payload=b"".join(_payload(r) for r in siblings),
                data_coding=siblings[0].data_coding,
                segments=total,
                connector_id=connector_id,
                now=now,
                incomplete=True,
            )
            INBOUND_MESSAGES.labels(outcome="incomplete").inc()
        for r in siblings:
            await session.delete(r)
    return len(groups)
