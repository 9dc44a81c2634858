"""API: `/v1/webhook-endpoints` — an account's webhook receivers, their secrets, test events,
replays and delivery log — and `/v1/notices`, what the account must know (an endpoint the
sender disabled).

Every route needs the `manage` scope: an endpoint decides where the account's events go.
Every change is audited on the account's chain (never with a secret, and with the URL's host
only: a URL may carry a token). A secret is in an answer only when it is made: on creation
and on rotation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from amnex.accounts.service import KeyContext
from amnex.api.deps import json_response, require_scope, runtime
from amnex.clock import utc_now
from amnex.errors import ValidationFailed
from amnex.privacy.audit import record_audit
from amnex.webhooks import endpoints as service
from amnex.webhooks.models import WebhookEndpoint

router = APIRouter(prefix="/v1", tags=["webhooks"])

Manager = Annotated[KeyContext, Depends(require_scope("manage"))]
DeliveryStatus = Literal["pending", "delivering", "delivered", "failed", "superseded", "canceled"]
EventTypes = list[Annotated[str, Field(max_length=40)]]


# Schemas


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="https (http in dev mode).")
    event_types: EventTypes | None = Field(
        None, max_length=50, description="The event types to receive; omitted or null: all."
    )
    description: str | None = Field(None, max_length=200)
    enabled: bool = True
    max_concurrency: int = Field(
        service.DEFAULT_MAX_CONCURRENCY,
        ge=1,
        le=service.MAX_CONCURRENCY,
        description="How many deliveries to this endpoint may be in flight at once.",
    )


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=2048)
    event_types: EventTypes | None = Field(None, max_length=50, description="null: all types.")
    description: str | None = Field(None, max_length=200)
    enabled: bool | None = None
    max_concurrency: int | None = Field(None, ge=1, le=service.MAX_CONCURRENCY)


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_s: int = Field(
        service.DEFAULT_OVERLAP_S,
        ge=0,
        le=service.MAX_OVERLAP_S,
        description="How long the old secret keeps signing too (0: it stops at once).",
    )


class Replay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime
    until: AwareDatetime | None = Field(None, description="Exclusive; default: now.")
    event_types: EventTypes | None = Field(None, max_length=50)


class SecretRotationOut(BaseModel):
    previous_expires_at: datetime | None


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str | None
    event_types: list[str] | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    max_concurrency: int
    secret_rotation: SecretRotationOut | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecretOut(EndpointOut):
    secret: str = Field(description="`whsec_` + base64: shown this once, keep it safe.")


class EndpointList(BaseModel):
    data: list[EndpointOut]
    next_cursor: str | None = None


class TestEventOut(BaseModel):
    event_id: str
    delivery_id: str


class ReplayOut(BaseModel):
    deliveries: int


class AttemptOut(BaseModel):
    id: int
    delivery_id: str
    event_id: str
    at: datetime
    attempt: int
    outcome: str
    status_code: int | None
    latency_ms: int
    detail: str | None


class AttemptList(BaseModel):
    data: list[AttemptOut]
    next_cursor: str | None = None


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_outcome: str | None
    last_status_code: int | None
    created_at: datetime


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None = None


class NoticeOut(BaseModel):
    id: str
    kind: str
    title: str
    detail: dict[str, Any] | None
    created_at: datetime
    read_at: datetime | None


class NoticeList(BaseModel):
    data: list[NoticeOut]
    next_cursor: str | None = None


# Helpers


def _out(endpoint: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(**service.endpoint_out(endpoint, utc_now()))


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> EndpointWithSecretOut:
    return EndpointWithSecretOut(**service.endpoint_out(endpoint, utc_now()), secret=secret)


def _location(endpoint_id: str) -> str:
    return f"/v1/webhook-endpoints/{endpoint_id}"


def _host(url: str) -> str:
    return httpx.URL(url).host


def _audit(
    session: AsyncSession, ctx: KeyContext, action: str, target_id: str, detail: dict[str, Any]
) -> None:
    record_audit(
        session,
        actor=f"api_key:{ctx.key_id}",
        action=action,
        target_type="webhook_endpoint",
        target_id=target_id,
        account_id=ctx.account_id,
        detail=detail,
    )


def _not_null(body: BaseModel, *names: str) -> None:
    for name in names:
        if name in body.model_fields_set and getattr(body, name) is None:
            raise ValidationFailed(f"{name}: may not be null", field=name)


# Endpoints


@router.post(
    "/webhook-endpoints",
    status_code=201,
    response_model=EndpointWithSecretOut,
    summary="Add a webhook endpoint (its signing secret is shown this once)",
)
async def create_endpoint(request: Request, ctx: Manager, body: EndpointCreate) -> Response:
    rt = runtime(request)
    event_types = service.check_event_types(body.event_types)
    url = await service.vet_url(body.url, rt.settings)
    async with rt.db.unit_of_work() as session:
        endpoint, secret = await service.create_endpoint(
            session,
            account_id=ctx.account_id,
            url=url,
            event_types=event_types,
            description=body.description,
            enabled=body.enabled,
            max_concurrency=body.max_concurrency,
            box=rt.secret_box,
            now=utc_now(),
        )
        _audit(
            session,
            ctx,
            "webhook_endpoint.create",
            endpoint.id,
            {"host": _host(url), "event_types": event_types, "enabled": endpoint.enabled},
        )
        out = _with_secret(endpoint, secret)
    return json_response(request, out, status_code=201, headers={"Location": _location(out.id)})


@router.get(
    "/webhook-endpoints",
    response_model=EndpointList,
    summary="The account's webhook endpoints, newest first",
)
async def list_endpoints(
    request: Request,
    ctx: Manager,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async with runtime(request).db.read_session() as session:
        rows, next_cursor = await service.list_endpoints(
            session, ctx.account_id, limit=limit, cursor=cursor
        )
        page = EndpointList(data=[_out(e) for e in rows], next_cursor=next_cursor)
    return json_response(request, page)


@router.get(
    "/webhook-endpoints/{endpoint_id}", response_model=EndpointOut, summary="A webhook endpoint"
)
async def get_endpoint(request: Request, ctx: Manager, endpoint_id: str) -> Response:
    async with runtime(request).db.read_session() as session:
        out = _out(await service.get_endpoint_or_raise(session, ctx.account_id, endpoint_id))
    return json_response(request, out)


@router.patch(
    "/webhook-endpoints/{endpoint_id}",
    response_model=EndpointOut,
    summary="Change a webhook endpoint (enabling it again clears why it was disabled)",
)
async def update_endpoint(
    request: Request, ctx: Manager, endpoint_id: str, body: EndpointUpdate
) -> Response:
    rt = runtime(request)
    _not_null(body, "url", "enabled", "max_concurrency")
    fields = frozenset(body.model_fields_set)
    event_types = service.check_event_types(body.event_types) if "event_types" in fields else None
    url = await service.vet_url(body.url, rt.settings) if body.url is not None else None
    changes = service.EndpointChanges(
        fields=fields,
        url=url,
        event_types=event_types,
        description=body.description,
        enabled=body.enabled,
        max_concurrency=body.max_concurrency,
    )
    async with rt.db.unit_of_work() as session:
        endpoint = await service.get_endpoint_or_raise(
            session, ctx.account_id, endpoint_id, for_update=True
        )
        changed = await service.update_endpoint(session, endpoint, changes, utc_now())
        if changed:
            _audit(
                session,
                ctx,
                "webhook_endpoint.update",
                endpoint.id,
                {
                    "changed": changed,
                    "host": _host(endpoint.url),
                    "event_types": endpoint.event_types,
                    "enabled": endpoint.enabled,
                    "max_concurrency": endpoint.max_concurrency,
                },
            )
        out = _out(endpoint)
    return json_response(request, out)


@router.delete(
    "/webhook-endpoints/{endpoint_id}",
    status_code=204,
    summary="Remove a webhook endpoint (what is still owed to it is canceled)",
)
async def delete_endpoint(request: Request, ctx: Manager, endpoint_id: str) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        endpoint = await service.get_endpoint_or_raise(
            session, ctx.account_id, endpoint_id, for_update=True
        )
        canceled = await service.delete_endpoint(session, endpoint, utc_now())
        _audit(
            session,
            ctx,
            "webhook_endpoint.delete",
            endpoint_id,
            {"host": _host(endpoint.url), "canceled_deliveries": canceled},
        )
    return Response(status_code=204)


@router.post(
    "/webhook-endpoints/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecretOut,
    summary="A new signing secret (shown this once); the old one signs too for `overlap_s`",
)
async def rotate_secret(
    request: Request, ctx: Manager, endpoint_id: str, body: RotateSecret | None = None
) -> Response:
    rt = runtime(request)
    overlap_s = (body or RotateSecret()).overlap_s
    async with rt.db.unit_of_work() as session:
        endpoint = await service.get_endpoint_or_raise(
            session, ctx.account_id, endpoint_id, for_update=True
        )
        secret = service.rotate_secret(
            endpoint, box=rt.secret_box, overlap_s=overlap_s, now=utc_now()
        )
        _audit(
            session,
            ctx,
            "webhook_endpoint.rotate_secret",
            endpoint.id,
            {"overlap_s": overlap_s},
        )
        out = _with_secret(endpoint, secret)
    return json_response(request, out)


@router.post(
    "/webhook-endpoints/{endpoint_id}/test",
    status_code=202,
    response_model=TestEventOut,
    summary="Send a `webhook.test` event to this endpoint",
)
async def send_test_event(request: Request, ctx: Manager, endpoint_id: str) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        endpoint = await service.get_endpoint_or_raise(session, ctx.account_id, endpoint_id)
        event, delivery = await service.send_test_event(session, endpoint, utc_now())
        _audit(session, ctx, "webhook_endpoint.test", endpoint.id, {"event_id": event.id})
        out = TestEventOut(event_id=event.id, delivery_id=delivery.id)
    return json_response(request, out, status_code=202)


@router.post(
    "/webhook-endpoints/{endpoint_id}/replay",
    status_code=202,
    response_model=ReplayOut,
    summary="Deliver the account's events of a window (at most 7 days) to this endpoint again",
)
async def replay(request: Request, ctx: Manager, endpoint_id: str, body: Replay) -> Response:
    event_types = service.check_event_types(body.event_types)
    now = utc_now()
    until = body.until or now
    service.check_replay_window(body.since, until)
    async with runtime(request).db.unit_of_work() as session:
        endpoint = await service.get_endpoint_or_raise(session, ctx.account_id, endpoint_id)
        count = await service.replay_events(
            session, endpoint, since=body.since, until=until, event_types=event_types, now=now
        )
        _audit(
            session,
            ctx,
            "webhook_endpoint.replay",
            endpoint.id,
            {
                "since": body.since.isoformat(),
                "until": until.isoformat(),
                "event_types": event_types,
                "deliveries": count,
            },
        )
    return json_response(request, ReplayOut(deliveries=count), status_code=202)


# The delivery log


@router.get(
    "/webhook-endpoints/{endpoint_id}/attempts",
    response_model=AttemptList,
    summary="The endpoint's delivery attempts, newest first",
)
async def list_attempts(
    request: Request,
    ctx: Manager,
    endpoint_id: str,
    event_id: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async with runtime(request).db.read_session() as session:
        endpoint = await service.get_endpoint_or_raise(session, ctx.account_id, endpoint_id)
        rows, next_cursor = await service.list_attempts(
            session, endpoint, event_id=event_id, limit=limit, cursor=cursor
        )
        page = AttemptList(
            data=[AttemptOut(**service.attempt_out(a)) for a in rows], next_cursor=next_cursor
        )
    return json_response(request, page)


@router.get(
    "/webhook-endpoints/{endpoint_id}/deliveries",
    response_model=DeliveryList,
    summary="The events owed or sent to the endpoint, newest first",
)
async def list_deliveries(
    request: Request,
    ctx: Manager,
    endpoint_id: str,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async with runtime(request).db.read_session() as session:
        endpoint = await service.get_endpoint_or_raise(session, ctx.account_id, endpoint_id)
        rows, next_cursor = await service.list_deliveries(
            session, endpoint, status=status, limit=limit, cursor=cursor
        )
        page = DeliveryList(
            data=[DeliveryOut(**service.delivery_out(d, t)) for d, t in rows],
            next_cursor=next_cursor,
        )
    return json_response(request, page)


# Notices


@router.get("/notices", response_model=NoticeList, summary="The account's notices, newest first")
async def list_notices(
    request: Request,
    ctx: Manager,
    unread: Annotated[bool, Query()] = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async with runtime(request).db.read_session() as session:
        rows, next_cursor = await service.list_notices(
            session, ctx.account_id, unread=unread, limit=limit, cursor=cursor
        )
        page = NoticeList(
            data=[NoticeOut(**service.notice_out(n)) for n in rows], next_cursor=next_cursor
        )
    return json_response(request, page)


@router.post("/notices/{notice_id}/read", response_model=NoticeOut, summary="Mark a notice as read")
async def read_notice(request: Request, ctx: Manager, notice_id: str) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        notice, marked = await service.mark_notice_read(
            session, ctx.account_id, notice_id, utc_now()
        )
        if marked:
            record_audit(
                session,
                actor=f"api_key:{ctx.key_id}",
                action="notice.read",
                target_type="notice",
                target_id=notice.id,
                account_id=ctx.account_id,
                detail={"kind": notice.kind},
            )
        out = NoticeOut(**service.notice_out(notice))
    return json_response(request, out)
