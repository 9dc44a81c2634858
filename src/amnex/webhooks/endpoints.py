"""Webhooks: an account's endpoints — create, change, rotate, test, replay, delete — and the
delivery log and notices they read.

Design note. A URL is vetted when it is set, by the same SSRF guard the sender applies before
every attempt (`webhooks.ssrf`), so a client learns at once that a URL will never be called;
the sender checks again, since what a name resolves to changes. A host that does not resolve
is refused too: at creation that is far more often a typo than a receiver still to come. The
signing secret is shown once and stored sealed under the master key (context
`webhook:<endpoint id>`, as `sender.secret_context` opens it). A rotation keeps the old secret,
sealed as it was, in `previous_secret` until the overlap ends; both sign meanwhile. Services
take the session first and never commit (the caller's unit of work does).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.config import Settings
from amnex.db.ids import looks_like_id, new_id
from amnex.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    ValidationFailed,
    WebhookUrlInvalid,
    WebhookUrlNotHttps,
    WebhookUrlUnresolvable,
    WebhookUrlUnsafe,
)
from amnex.privacy.crypto import SecretBox
from amnex.webhooks import signing, ssrf
from amnex.webhooks.models import (
    Notice,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from amnex.webhooks.outbox import EVENT_TYPES, TEST_TYPE, delivery_for, wants
from amnex.webhooks.sender import policy_of, secret_context

ENDPOINT_PREFIX = "whe"
DEFAULT_MAX_CONCURRENCY = 4
MAX_CONCURRENCY = 20
DEFAULT_OVERLAP_S = 86_400
MAX_OVERLAP_S = 7 * 86_400
REPLAY_MAX_WINDOW = timedelta(days=7)
# A replay is one transaction; a window holding more events than this is refused (replay
# shorter windows) rather than holding the database for minutes.
REPLAY_MAX_EVENTS = 10_000
# What `disabled_reason` says when the client disabled the endpoint itself; the sender sets
# "failing" or "gone".
DISABLED_BY_CLIENT = "manual"
TEST_MESSAGE = "A test event from Amnex: your endpoint receives and verifies webhooks."


# Validation (pure)


def check_event_types(
    types: Sequence[str] | None, *, field: str = "event_types"
) -> list[str] | None:
    """The types, each once in the order given, or None (every type); a 422 names the first
    unknown entry as `event_types[i]`."""
    if types is None:
        return None
    if not types:
        raise ValidationFailed(
            f"{field}: give at least one event type, or omit it for every type", field=field
        )
    errors = [
        {
            "field": f"{field}[{index}]",
            "code": "unknown_event_type",
            "message": f"{type_!r} is not an event type",
        }
        for index, type_ in enumerate(types)
        if type_ not in EVENT_TYPES
    ]
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors)
            + f" (known: {', '.join(EVENT_TYPES)})",
            field=errors[0]["field"],
            errors=errors,
        )
    return list(dict.fromkeys(types))


def url_refused(exc: ssrf.UnsafeDestination) -> ValidationFailed:
    """The API error for a refusal of the SSRF guard (its stable code mapped to ours)."""
    if exc.code == ssrf.URL_INVALID:
        return WebhookUrlInvalid(f"url: {exc.detail}", field="url")
    if exc.code == ssrf.URL_NOT_HTTPS:
        return WebhookUrlNotHttps(f"url: {exc.detail}", field="url")
    if exc.code == ssrf.DESTINATION_UNRESOLVABLE:
        return WebhookUrlUnresolvable(f"url: {exc.detail}", field="url")
    return WebhookUrlUnsafe(f"url: {exc.detail}", field="url", reason=exc.code)


async def vet_url(url: str, settings: Settings) -> str:
    """The URL when the sender would call it: https (outside dev mode), well formed, and
    resolving only to addresses the operator's policy permits."""
    try:
        parsed = ssrf.check_url(url, require_https=not settings.dev_mode)
        await ssrf.resolve_and_vet(
            parsed.raw_host.decode("ascii"), ssrf.url_port(parsed), policy_of(settings)
        )
    except ssrf.UnsafeDestination as exc:
        raise url_refused(exc) from None
    return url


# Cursors: the last id seen, opaque to clients


def encode_cursor(value: str | int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc


def _bad_cursor() -> InvalidRequest:
    return InvalidRequest("cursor: not a cursor this API returned", field="cursor")


def _id_cursor(cursor: str, prefix: str) -> str:
    after = _decode_cursor(cursor)
    if not looks_like_id(after, prefix):
        raise _bad_cursor()
    return after


def _page(rows: list[Any], limit: int, key: str = "id") -> tuple[list[Any], str | None]:
    next_cursor = encode_cursor(getattr(rows[limit - 1], key)) if len(rows) > limit else None
    return rows[:limit], next_cursor


# Endpoints


def endpoint_out(endpoint: WebhookEndpoint, now: datetime) -> dict[str, Any]:
    """The endpoint as the API shows it: never a secret."""
    rotating = (
        endpoint.previous_secret is not None
        and endpoint.previous_secret_expires_at is not None
        and endpoint.previous_secret_expires_at > now
    )
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since,
        "max_concurrency": endpoint.max_concurrency,
        "secret_rotation": (
            {"previous_expires_at": endpoint.previous_secret_expires_at} if rotating else None
        ),
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


async def create_endpoint(
    session: AsyncSession,
    *,
    account_id: str,
    url: str,
    event_types: list[str] | None,
    description: str | None,
    enabled: bool,
    max_concurrency: int,
    box: SecretBox,
    now: datetime,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret in clear (shown once; stored sealed). The URL and types
    are vetted by the caller (`vet_url`, `check_event_types`)."""
    endpoint_id = new_id(ENDPOINT_PREFIX)
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        account_id=account_id,
        url=url,
        description=description,
        event_types=event_types,
        enabled=enabled,
        secret=box.seal(secret, context=secret_context(endpoint_id)),
        previous_secret=None,
        previous_secret_expires_at=None,
        failing_since=None,
        disabled_reason=None if enabled else DISABLED_BY_CLIENT,
        max_concurrency=max_concurrency,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    await session.flush()
    return endpoint, secret


async def get_endpoint_or_raise(
    session: AsyncSession, account_id: str, endpoint_id: str, *, for_update: bool = False
) -> WebhookEndpoint:
    endpoint = (
        await session.get(WebhookEndpoint, endpoint_id, with_for_update=for_update)
        if looks_like_id(endpoint_id, ENDPOINT_PREFIX)
        else None
    )
    if endpoint is None or endpoint.account_id != account_id:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return endpoint


async def list_endpoints(
    session: AsyncSession, account_id: str, *, limit: int, cursor: str | None = None
) -> tuple[list[WebhookEndpoint], str | None]:
    """The account's endpoints, newest first (ids sort by time; the cursor is the last)."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
    if cursor:
        query = query.where(WebhookEndpoint.id < _id_cursor(cursor, ENDPOINT_PREFIX))
    rows = list(await session.scalars(query.order_by(WebhookEndpoint.id.desc()).limit(limit + 1)))
    return _page(rows, limit)


async def _cancel_pending(session: AsyncSession, endpoint_id: str, now: datetime) -> int:
    """Cancel what is still owed to the endpoint; a delivery being sent finishes."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "pending")
        .values(status="canceled", next_attempt_at=None, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """A PATCH: the fields given (`fields`), with their values; others are left alone."""

    fields: frozenset[str]
    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None
    max_concurrency: int | None = None


async def update_endpoint(
    session: AsyncSession, endpoint: WebhookEndpoint, changes: EndpointChanges, now: datetime
) -> list[str]:
    """Apply a vetted PATCH; returns the names of the fields that changed. Disabling cancels
    what is still owed; enabling again clears `disabled_reason` and `failing_since`."""
    changed: list[str] = []
    for name in ("url", "event_types", "description", "max_concurrency"):
        if name in changes.fields and getattr(changes, name) != getattr(endpoint, name):
            setattr(endpoint, name, getattr(changes, name))
            changed.append(name)
    if "enabled" in changes.fields and changes.enabled is not None:
        if changes.enabled and not endpoint.enabled:
            endpoint.enabled = True
            endpoint.disabled_reason = None
            endpoint.failing_since = None
            changed.append("enabled")
        elif not changes.enabled and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_reason = DISABLED_BY_CLIENT
            await _cancel_pending(session, endpoint.id, now)
            changed.append("enabled")
    if changed:
        endpoint.updated_at = now
    return changed


async def delete_endpoint(session: AsyncSession, endpoint: WebhookEndpoint, now: datetime) -> int:
    """Remove the endpoint; what was still owed to it is canceled (returns how many). Its
    delivery log stays until the log's retention removes it."""
    canceled = await _cancel_pending(session, endpoint.id, now)
    await session.delete(endpoint)
    return canceled


def rotate_secret(
    endpoint: WebhookEndpoint, *, box: SecretBox, overlap_s: int, now: datetime
) -> str:
    """A new secret (returned in clear, once); the current one keeps signing for `overlap_s`
    (none with 0). A rotation during an overlap drops the secret before the current one."""
    secret = signing.new_secret()
    sealed = box.seal(secret, context=secret_context(endpoint.id))
    if overlap_s > 0:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = now + timedelta(seconds=overlap_s)
    else:
        endpoint.previous_secret = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret = sealed
    endpoint.updated_at = now
    return secret


def _require_enabled(endpoint: WebhookEndpoint, what: str) -> None:
    if not endpoint.enabled:
        raise Conflict(
            f"webhook endpoint {endpoint.id} is disabled"
            f" ({endpoint.disabled_reason or DISABLED_BY_CLIENT}): enable it to {what}",
            endpoint_id=endpoint.id,
        )


async def send_test_event(
    session: AsyncSession, endpoint: WebhookEndpoint, now: datetime
) -> tuple[WebhookEvent, WebhookDelivery]:
    """A `webhook.test` event and its one delivery, to this endpoint only."""
    _require_enabled(endpoint, "send a test event")
    event = WebhookEvent(
        id=new_id("evt"),
        account_id=endpoint.account_id,
        type=TEST_TYPE,
        subject_id=endpoint.id,
        seq=0,
        data={"object": "webhook_test", "endpoint_id": endpoint.id, "message": TEST_MESSAGE},
        created_at=now,
    )
    session.add(event)
    await session.flush()
    delivery = delivery_for(event, endpoint_id=endpoint.id, callback_url=None, now=now)
    session.add(delivery)
    return event, delivery


def check_replay_window(since: datetime, until: datetime) -> None:
    if since >= until:
        raise ValidationFailed("since: must be before until", field="since")
    if until - since > REPLAY_MAX_WINDOW:
        raise ValidationFailed(
            f"until: a replay covers at most {REPLAY_MAX_WINDOW.days} days", field="until"
        )


async def replay_events(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    *,
    since: datetime,
    until: datetime,
    event_types: list[str] | None,
    now: datetime,
) -> int:
    """A new delivery to the endpoint of each of the account's events created in
    [since, until) that it wants (and of `event_types`, when given); the event ids are
    kept, so receivers see the same `webhook-id` as the first time. Test events are not
    replayed. Returns how many deliveries were made."""
    _require_enabled(endpoint, "replay events")
    check_replay_window(since, until)
    conditions = [
        WebhookEvent.account_id == endpoint.account_id,
        WebhookEvent.created_at >= since,
        WebhookEvent.created_at < until,
        WebhookEvent.type != TEST_TYPE,
    ]
    if event_types is not None:
        conditions.append(WebhookEvent.type.in_(event_types))
    if endpoint.event_types is not None:
        conditions.append(WebhookEvent.type.in_(endpoint.event_types))
    found = int(
        await session.scalar(select(func.count()).select_from(WebhookEvent).where(*conditions)) or 0
    )
    if found > REPLAY_MAX_EVENTS:
        raise ValidationFailed(
            f"since: the window holds {found} events, more than {REPLAY_MAX_EVENTS} a replay "
            "takes; replay shorter windows",
            field="since",
        )
    count = 0
    events = await session.scalars(
        select(WebhookEvent).where(*conditions).order_by(WebhookEvent.created_at, WebhookEvent.id)
    )
    for event in events:
        if wants(endpoint, event.type):
            session.add(delivery_for(event, endpoint_id=endpoint.id, callback_url=None, now=now))
            count += 1
    return count


# The delivery log


async def list_attempts(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    *,
    event_id: str | None = None,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[WebhookAttempt], str | None]:
    """The endpoint's attempts, newest first."""
    query = select(WebhookAttempt).where(
        WebhookAttempt.endpoint_id == endpoint.id,
        WebhookAttempt.account_id == endpoint.account_id,
    )
    if event_id is not None:
        query = query.where(WebhookAttempt.event_id == event_id)
    if cursor:
        after = _decode_cursor(cursor)
        if not (after.isascii() and after.isdigit()):
            raise _bad_cursor()
        query = query.where(WebhookAttempt.id < int(after))
    rows = list(await session.scalars(query.order_by(WebhookAttempt.id.desc()).limit(limit + 1)))
    return _page(rows, limit)


def attempt_out(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "delivery_id": attempt.delivery_id,
        "event_id": attempt.event_id,
        "at": attempt.at,
        "attempt": attempt.attempt,
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "detail": attempt.detail,
    }


async def list_deliveries(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    *,
    status: str | None = None,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[tuple[WebhookDelivery, str]], str | None]:
    """The endpoint's deliveries with their event's type, newest first."""
    query = (
        select(WebhookDelivery, WebhookEvent.type)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.account_id == endpoint.account_id,
        )
    )
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if cursor:
        query = query.where(WebhookDelivery.id < _id_cursor(cursor, "whd"))
    rows = [
        (delivery, type_)
        for delivery, type_ in await session.execute(
            query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)
        )
    ]
    next_cursor = encode_cursor(rows[limit - 1][0].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def delivery_out(delivery: WebhookDelivery, event_type: str) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "last_outcome": delivery.last_outcome,
        "last_status_code": delivery.last_status_code,
        "created_at": delivery.created_at,
    }


# Notices


async def list_notices(
    session: AsyncSession,
    account_id: str,
    *,
    unread: bool = False,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[Notice], str | None]:
    """The account's notices, newest first (only unread ones with `unread`)."""
    query = select(Notice).where(Notice.account_id == account_id)
    if unread:
        query = query.where(Notice.read_at.is_(None))
    if cursor:
        query = query.where(Notice.id < _id_cursor(cursor, "ntc"))
    rows = list(await session.scalars(query.order_by(Notice.id.desc()).limit(limit + 1)))
    return _page(rows, limit)


async def mark_notice_read(
    session: AsyncSession, account_id: str, notice_id: str, now: datetime
) -> tuple[Notice, bool]:
    """The notice, read (the first read's time is kept); whether this call marked it."""
    notice = (
        await session.get(Notice, notice_id, with_for_update=True)
        if looks_like_id(notice_id, "ntc")
        else None
    )
    if notice is None or notice.account_id != account_id:
        raise NotFound(f"no notice {notice_id}")
    if notice.read_at is not None:
        return notice, False
    notice.read_at = now
    return notice, True


def notice_out(notice: Notice) -> dict[str, Any]:
    return {
        "id": notice.id,
        "kind": notice.kind,
        "title": notice.title,
        "detail": notice.detail,
        "created_at": notice.created_at,
        "read_at": notice.read_at,
    }
