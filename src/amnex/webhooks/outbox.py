"""Webhooks: turn the outbox into events and deliveries.

Design note. `drain_outbox` takes up to `limit` outbox rows (`FOR UPDATE SKIP LOCKED`, so
several workers share the work), reads what each one points at, builds the event — the
message's, opt-out's, consent's or request's current state, never message content — and one
delivery per enabled endpoint of the account that wants the type (and one to a message's
`status_callback` URL), then deletes the rows, all in one transaction: a crash before the
commit leaves the outbox as it was, and the next run does the work again.

Message events map to types by the status they record: `queued`, `sent`, `delivered`,
`undelivered`, `failed`, `rejected`, `canceled` → `message.<status>`; a `delivered` event of
an inbound message → `message.inbound` (with a link to fetch the text while retention keeps
it). `scheduled` and `sending` are steps no client acts on and have no event type.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.db.ids import new_id
from amnex.messages.models import Message, MessageEvent
from amnex.privacy.keys import load_keys, open_address
from amnex.privacy.requests import SubjectRequest, SubjectRequestEvent
from amnex.recipients.models import ConsentEntry, OptOutEvent
from amnex.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent, WebhookOutbox

MESSAGE_TYPES = {
    "queued": "message.queued",
    "sent": "message.sent",
    "delivered": "message.delivered",
    "undelivered": "message.undelivered",
    "failed": "message.failed",
    "rejected": "message.rejected",
    "canceled": "message.canceled",
}
EVENT_TYPES = (
    *MESSAGE_TYPES.values(),
    "message.inbound",
    "optout.created",
    "optout.deleted",
    "consent.created",
    "privacy_request.updated",
)
TEST_TYPE = "webhook.test"


def _json(value: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = to_jsonable_python(value)
    return converted


# What an event says about its message: its state, never its content (which is not even read).
_MESSAGE_COLUMNS = (
    Message.id,
    Message.account_id,
    Message.channel,
    Message.direction,
    Message.from_addr,
    Message.to_addr,
    Message.category,
    Message.status,
    Message.error_code,
    Message.provider_error_code,
    Message.segments,
    Message.price,
    Message.created_at,
    Message.sent_at,
    Message.delivered_at,
    Message.failed_at,
    Message.updated_at,
    Message.meta,
    Message.status_callback,
)


def message_data(message: Any, event: MessageEvent) -> dict[str, Any]:
    """A message event's data: the message's current state (no content) and the event."""
    data: dict[str, Any] = {
        "id": message.id,
        "object": "message",
        "account_id": message.account_id,
        "channel": message.channel,
        "direction": message.direction,
        "from": open_address(message.from_addr),
        "to": open_address(message.to_addr),
        "category": message.category,
        "status": message.status,
        "error_code": message.error_code,
        "provider_error_code": message.provider_error_code,
        "segments": message.segments,
        "price": None if message.price is None else str(message.price),
        "created_at": message.created_at,
        "sent_at": message.sent_at,
        "delivered_at": message.delivered_at,
        "failed_at": message.failed_at,
        "updated_at": message.updated_at,
        "metadata": message.meta,
        "event": {
            "status": event.status,
            "sequence": event.seq,
            "at": event.at,
            "error_code": event.error_code,
        },
    }
    if message.direction == "inbound":
        data["links"] = {"message": f"/v1/messages/{message.id}"}
    return _json(data)


def _message_type(message: Any, event: MessageEvent) -> str | None:
    if message.direction == "inbound":
        return "message.inbound" if event.status == "delivered" and event.seq == 1 else None
    return MESSAGE_TYPES.get(event.status)


class _Built:
    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []
        self.callbacks: dict[str, str] = {}  # event id -> a message's status_callback


async def _message_events(
    session: AsyncSession, ids: Sequence[str], built: _Built, now: datetime
) -> None:
    events = list(
        await session.scalars(
            select(MessageEvent)
            .where(MessageEvent.id.in_([int(i) for i in ids]))
            .order_by(MessageEvent.id)
        )
    )
    messages = {
        row.id: row
        for row in await session.execute(
            select(*_MESSAGE_COLUMNS).where(Message.id.in_({e.message_id for e in events}))
        )
    }
    await load_keys({message.account_id for message in messages.values()})
    for event in events:
        message = messages.get(event.message_id)
        if message is None:
            continue
        type_ = _message_type(message, event)
        if type_ is None:
            continue
        webhook_event = WebhookEvent(
            id=new_id("evt"),
            account_id=message.account_id,
            type=type_,
            subject_id=message.id,
            seq=event.seq,
            data=message_data(message, event),
            created_at=event.at,
        )
        built.events.append(webhook_event)
        if message.status_callback and message.direction == "outbound":
            built.callbacks[webhook_event.id] = message.status_callback


async def _opt_out_events(
    session: AsyncSession, ids: Sequence[str], built: _Built, now: datetime
) -> None:
    rows = list(await session.scalars(select(OptOutEvent).where(OptOutEvent.id.in_(ids))))
    await load_keys({row.account_id for row in rows})
    for row in sorted(rows, key=lambda r: r.id):
        if row.account_id is None:
            continue
        built.events.append(
            WebhookEvent(
                id=new_id("evt"),
                account_id=row.account_id,
                type=f"optout.{row.action}",
                subject_id=row.opt_out_id,
                seq=0,
                data=_json(
                    {
                        "id": row.opt_out_id,
                        "object": "opt_out",
                        "account_id": row.account_id,
                        "channel": row.channel,
                        "address": open_address(row.address),
                        "source": row.source,
                        "action": row.action,
                        "at": row.at,
                    }
                ),
                created_at=row.at,
            )
        )


async def _consents(
    session: AsyncSession, ids: Sequence[str], built: _Built, now: datetime
) -> None:
    rows = list(await session.scalars(select(ConsentEntry).where(ConsentEntry.id.in_(ids))))
    await load_keys({row.account_id for row in rows})
    for row in sorted(rows, key=lambda r: (r.account_id, r.seq)):
        built.events.append(
            WebhookEvent(
                id=new_id("evt"),
                account_id=row.account_id,
                type="consent.created",
                subject_id=row.id,
                seq=0,
                data=_json(
                    {
                        "id": row.id,
                        "object": "consent",
                        "account_id": row.account_id,
                        "channel": row.channel,
                        "address": open_address(row.address),
                        "purpose": row.purpose,
                        "action": row.action,
                        "source": row.source,
                        "occurred_at": row.occurred_at,
                        "recorded_at": row.recorded_at,
                    }
                ),
                created_at=row.recorded_at,
            )
        )


async def _requests(
    session: AsyncSession, ids: Sequence[str], built: _Built, now: datetime
) -> None:
    rows = (
        await session.execute(
            select(SubjectRequestEvent, SubjectRequest)
            .join(SubjectRequest, SubjectRequest.id == SubjectRequestEvent.request_id)
            .where(SubjectRequestEvent.id.in_(ids))
        )
    ).all()
    for step, request in sorted(rows, key=lambda r: r[0].id):
        if request.account_id is None:
            continue
        built.events.append(
            WebhookEvent(
                id=new_id("evt"),
                account_id=request.account_id,
                type="privacy_request.updated",
                subject_id=request.id,
                seq=0,
                data=_json(
                    {
                        "id": request.id,
                        "object": "privacy_request",
                        "account_id": request.account_id,
                        "type": request.type,
                        "status": request.status,
                        "step": step.action,
                        "address_masked": request.address_masked,
                        "due_at": request.due_at,
                        "extended_until": request.extended_until,
                        "completed_at": request.completed_at,
                        "at": step.at,
                    }
                ),
                created_at=step.at,
            )
        )


_READERS = {
    "message": _message_events,
    "opt_out": _opt_out_events,
    "consent": _consents,
    "request": _requests,
}


def wants(endpoint: WebhookEndpoint, type_: str) -> bool:
    return endpoint.event_types is None or type_ in endpoint.event_types


def delivery_for(
    event: WebhookEvent, *, endpoint_id: str | None, callback_url: str | None, now: datetime
) -> WebhookDelivery:
    return WebhookDelivery(
        id=new_id("whd"),
        event_id=event.id,
        account_id=event.account_id,
        endpoint_id=endpoint_id,
        callback_url=callback_url,
        subject_id=event.subject_id,
        seq=event.seq,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


async def enabled_endpoints(
    session: AsyncSession, account_ids: Iterable[str]
) -> dict[str, list[WebhookEndpoint]]:
    endpoints: dict[str, list[WebhookEndpoint]] = defaultdict(list)
    wanted = sorted(set(account_ids))
    if not wanted:
        return endpoints
    for endpoint in await session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.account_id.in_(wanted), WebhookEndpoint.enabled.is_(True)
        )
    ):
        endpoints[endpoint.account_id].append(endpoint)
    return endpoints


async def drain_outbox(session: AsyncSession, *, now: datetime, limit: int = 500) -> int:
    """Turn up to `limit` outbox rows into events and deliveries (see the design note);
    returns how many rows were taken."""
    rows = list(
        await session.scalars(
            select(WebhookOutbox)
            .order_by(WebhookOutbox.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not rows:
        return 0
    by_source: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_source[row.source].append(row.source_id)
    built = _Built()
    for source, ids in by_source.items():
        reader = _READERS.get(source)
        if reader is not None:
            await reader(session, ids, built, now)
    endpoints = await enabled_endpoints(session, (e.account_id for e in built.events))
    for event in built.events:
        session.add(event)
    await session.flush()
    for event in built.events:
        for endpoint in endpoints.get(event.account_id, []):
            if wants(endpoint, event.type):
                session.add(
                    delivery_for(event, endpoint_id=endpoint.id, callback_url=None, now=now)
                )
        callback = built.callbacks.get(event.id)
        if callback is not None:
            session.add(delivery_for(event, endpoint_id=None, callback_url=callback, now=now))
    await session.execute(
        delete(WebhookOutbox).where(WebhookOutbox.id.in_([row.id for row in rows]))
    )
    return len(rows)
