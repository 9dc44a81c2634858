"""API: `/v1/messages` — send, read, list, events, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from amnex.accounts.service import KeyContext
from amnex.api.deps import authorize, json_body, json_response, require_scope, runtime
from amnex.api.ratelimit import give_back, take_sending_quota
from amnex.channels.smpp.text import prepare_text
from amnex.clock import utc_now
from amnex.compliance.gate import decide
from amnex.compliance.verdict import Defer, Reject
from amnex.errors import (
    AmnexError,
    ComplianceRejected,
    Conflict,
    IdempotencyKeyReused,
    InvalidRequest,
)
from amnex.messages import idempotency
from amnex.messages.accept import DuplicateIdempotencyKey
from amnex.messages.models import IdempotencyRecord
from amnex.messages.schemas import (
    Channel,
    MessageEventList,
    MessageEventOut,
    MessageList,
    MessageOut,
    SendMessageRequest,
)
from amnex.messages.service import (
    MessageFilter,
    PreparedMessage,
    cancel_message,
    get_message_or_raise,
    list_events,
    list_messages,
    message_json,
    message_out,
    prepare_message,
)
from amnex.messages.status import Status
from amnex.metrics import MESSAGES_ACCEPTED, MESSAGES_REJECTED
from amnex.privacy.audit import record_access
from amnex.recipients.facts import facts_session
from amnex.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["messages"])

SendKey = Annotated[KeyContext, Depends(require_scope("send"))]
# One counter child per channel, looked up once rather than on every accepted message.
_ACCEPTED = {channel: MESSAGES_ACCEPTED.labels(channel=channel) for channel in get_args(Channel)}
# Components the hand-read request body refers to; create_app adds them to the OpenAPI document.
OPENAPI_COMPONENTS = {"SendMessageRequest": SendMessageRequest.model_json_schema(by_alias=True)}
ReadKey = Annotated[KeyContext, Depends(require_scope("read"))]


@router.post(
    "/messages",
    status_code=201,
    response_model=MessageOut,
    summary="Send a message",
    description=(
        "Answers 201 once the message is durably stored. With an `Idempotency-Key` seen in the "
        "last 24 hours and the same body, answers as the first request did (201, the same id, "
        "the message as it is now) with `Idempotent-Replayed: true`."
    ),
    # The body and the header are read by hand on this hot path (see deps.json_body); the
    # OpenAPI document still describes them.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SendMessageRequest"}}
            },
        },
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Repeat a request safely: same key and body, same answer (24 h).",
                "schema": {"type": "string", "maxLength": 255},
            }
        ],
        "security": [{"bearer": []}],
    },
)
async def send_message(request: Request) -> Response:
    ctx = await authorize(request, "send")
    rt = runtime(request)
    # Backpressure before the body is even read: a refusal under overload costs no memory.
    # The verdict comes from the background sample (api.backpressure), not from a query.
    try:
        rt.backpressure.check(ctx.account_id)
    except AmnexError as exc:
        MESSAGES_REJECTED.labels(code=exc.code).inc()
        raise
    body = await json_body(request, SendMessageRequest)
    idempotency_key = request.headers.get("idempotency-key")
    now = utc_now()
    key_hash = request_hash = None
    if idempotency_key is not None:
        key_hash = idempotency.hash_idempotency_key(idempotency_key)
        request_hash = idempotency.hash_request(
            body.model_dump(mode="json", by_alias=True, exclude_unset=True)
        )
    # An Idempotency-Key is looked up only when it matters — the key's row is inserted with
    # the message, and a key already stored makes that insert conflict — not before every
    # send: a read per request would cost the accept path as much as the rest of it.
    for _ in range(2):
        try:
            prepared = await _accept(rt, ctx, body, now, key_hash, request_hash)
        except DuplicateIdempotencyKey:
            # Stored before, by an earlier or a concurrent request with this key.
            record = await idempotency.find_idempotency_record(
                rt.db, ctx.account_id, str(key_hash), now=now
            )
            if record is None:
                continue  # it had expired (and is now deleted): the key is free again
            return await _replay(request, ctx, record, str(request_hash))
        except AmnexError as exc:
            # Refused now (a recipient opted out since, a cap reached, ...): a retry of a send
            # accepted earlier still gets its original answer.
            if key_hash is not None:
                record = await idempotency.find_idempotency_record(
                    rt.db, ctx.account_id, key_hash, now=now
                )
                if record is not None:
                    return await _replay(request, ctx, record, str(request_hash))
            MESSAGES_REJECTED.labels(code=exc.code).inc()
            raise
        break
    else:  # the key expired and was taken again twice in a row: let the client retry
        raise Conflict("another request with this Idempotency-Key is being stored; retry")
    _ACCEPTED[body.channel].inc()
    return json_response(
        request,
        message_json(prepared.row, to=prepared.to),
        status_code=201,
        headers={"Location": f"/v1/messages/{prepared.row['id']}"},
    )


async def _accept(
    rt: Runtime,
    ctx: KeyContext,
    body: SendMessageRequest,
    now: datetime,
    key_hash: str | None,
    request_hash: str | None,
) -> PreparedMessage:
    """Prepare, check and store one message (with its idempotency key's row, if any)."""
    prepared = prepare_message(ctx, body, now=now, routes=rt.routes.current, geo=rt.geo)
    # The connector is known once the message is routed (api.backpressure).
    rt.backpressure.check_connector(prepared.row["connector_id"])
    idem_row = None
    if key_hash is not None and request_hash is not None:
        idem_row = idempotency.idempotency_row(
            account_id=ctx.account_id,
            key_hash=key_hash,
            request_hash=request_hash,
            resource_id=prepared.row["id"],
            status_code=201,
            now=now,
            ttl_s=rt.settings.idempotency_ttl_s,
        )
    taken = await _take_quota(rt, ctx, prepared, now)
    try:
        return await rt.writer.submit(prepared, idem_row)
    except BaseException:
        await give_back(rt.limiter, taken)  # not stored: not counted
        raise


async def _take_quota(
    rt: Runtime, ctx: KeyContext, prepared: PreparedMessage, now: datetime
) -> list[tuple[str, int]]:
    settings = ctx.rules.settings
    if not (settings.daily_cap or settings.prefix_velocity_per_minute):
        return []
    return await take_sending_quota(
        rt.limiter,
        ctx.rules,
        channel=prepared.row["channel"],
        to=prepared.to,
        now=now,
    )


async def _replay(
    request: Request, ctx: KeyContext, record: IdempotencyRecord, request_hash: str
) -> Response:
    if record.request_hash != request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different request body in the last 24 hours"
        )
    async with runtime(request).db.read_session() as session:
        message = await get_message_or_raise(session, ctx.account_id, record.resource_id)
        out = message_out(message)
    return json_response(
        request,
        out,
        status_code=record.status_code,
        headers={"Idempotent-Replayed": "true", "Location": f"/v1/messages/{out.id}"},
    )


class PreviewVerdict(BaseModel):
    """What the compliance gate would do with the message now."""

    decision: Literal["send", "defer", "reject"]
    rule: str | None = None
    code: str | None = None
    detail: str | None = None
    send_at: datetime | None = None


class PreviewFlag(BaseModel):
    code: str
    detail: str


class MessagePreview(BaseModel):
    """The message as `POST /v1/messages` would store it, and the gate's verdict; nothing
    is stored."""

    model_config = ConfigDict(populate_by_name=True)

    channel: Channel
    to: str
    from_: str | None = Field(None, alias="from")
    category: str
    segments: int | None
    encoding: str | None
    encoding_report: dict[str, Any] | None
    verdict: PreviewVerdict
    flags: list[PreviewFlag]
    price: None = Field(None, description="Null until billing exists.")


@router.post(
    "/messages/preview",
    response_model=MessagePreview,
    summary="Check a message without sending it",
    description=(
        "Runs the whole compliance gate and the SMS encoder on the request, as "
        "`POST /v1/messages` would, and stores nothing: segments, encoding, the characters "
        "that forced UCS-2, and which rule would defer or reject it. A malformed request is "
        "answered with the same 4xx problem as a send."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SendMessageRequest"}}
            },
        },
        "security": [{"bearer": []}],
    },
)
async def preview_message(request: Request) -> Response:
    ctx = await authorize(request, "send")
    body = await json_body(request, SendMessageRequest)
    rt = runtime(request)
    now = utc_now()
    flags: list[PreviewFlag] = []
    try:
        prepared = prepare_message(ctx, body, now=now, routes=rt.routes.current, geo=rt.geo)
    except ComplianceRejected as exc:
        sms = prepare_text(body.body or "") if body.channel == "sms" else None
        out = MessagePreview(
            channel=body.channel,
            to=body.to,
            from_=body.from_,
            category=body.category,
            segments=sms.segments if sms else None,
            encoding=sms.encoding if sms else None,
            encoding_report=None,
            verdict=PreviewVerdict(
                decision="reject", rule=exc.extra.get("rule"), code=exc.code, detail=exc.detail
            ),
            flags=flags,
        )
        return json_response(request, out)
    row, gate = prepared.row, prepared.gate
    verdict: PreviewVerdict = PreviewVerdict(decision="send")
    if gate is not None:
        async with rt.db.read_session() as session:
            (facts,) = await facts_session(session, [gate.facts])
        flags = [PreviewFlag(code=f.code, detail=f.detail) for f in gate.screened.flags]
        decided = decide(gate.candidate, gate.screened, facts)
        if isinstance(decided, Reject):
            verdict = PreviewVerdict(
                decision="reject", rule=decided.rule, code=decided.code, detail=decided.detail
            )
        elif isinstance(decided, Defer) and decided.until > row["next_attempt_at"]:
            verdict = PreviewVerdict(
                decision="defer", rule=decided.rule, detail=decided.detail, send_at=decided.until
            )
    if verdict.decision == "send" and row["status"] == Status.SCHEDULED.value:
        verdict = PreviewVerdict(decision="defer", detail="send_at", send_at=row["next_attempt_at"])
    out = MessagePreview(
        channel=row["channel"],
        to=prepared.to,
        from_=row["from_addr"],
        category=row["category"],
        segments=row.get("segments"),
        encoding=row.get("encoding"),
        encoding_report=row.get("encoding_report"),
        verdict=verdict,
        flags=flags,
    )
    return json_response(request, out)


@router.get("/messages/{message_id}", response_model=MessageOut, summary="Get a message")
async def get_message(request: Request, message_id: str, ctx: ReadKey) -> Response:
    db = runtime(request).db
    async with db.read_session() as session:
        message = await get_message_or_raise(session, ctx.account_id, message_id)
        out = message_out(message)
    # Personal data read by a client user: audited before it is served (privacy.audit).
    await record_access(
        db,
        actor=f"api_key:{ctx.key_id}",
        action="message.read",
        target_type="message",
        target_id=out.id,
        account_id=ctx.account_id,
    )
    return json_response(request, out)


@router.get("/messages", response_model=MessageList, summary="List messages, newest first")
async def list_messages_route(
    request: Request,
    ctx: ReadKey,
    status: Annotated[Status | None, Query()] = None,
    channel: Annotated[Channel | None, Query()] = None,
    to: Annotated[str | None, Query(max_length=320)] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=400)] = None,
    direction: Annotated[Literal["outbound", "inbound"] | None, Query()] = None,
    created_after: Annotated[datetime | None, Query()] = None,
    created_before: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    for name, value in (("created_after", created_after), ("created_before", created_before)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name}: give a time zone offset (e.g. Z)", field=name)
    filters = MessageFilter(
        status=status.value if status else None,
        channel=channel,
        to=to,
        from_=from_,
        direction=direction,
        created_after=created_after,
        created_before=created_before,
    )
    db = runtime(request).db
    async with db.read_session() as session:
        rows, next_cursor = await list_messages(
            session, ctx.account_id, filters, limit=limit, cursor=cursor
        )
        page = MessageList(data=[message_out(m) for m in rows], next_cursor=next_cursor)
    await record_access(
        db,
        actor=f"api_key:{ctx.key_id}",
        action="message.list",
        target_type="message",
        target_id="*",
        account_id=ctx.account_id,
        detail={
            "count": len(page.data),
            "ids": [m.id for m in page.data],
            # Address filters are personal: kept apart from the chain, erasable.
            **{k: v for k, v in (("to", to), ("from", from_)) if v is not None},
        },
        personal=("to", "from"),
    )
    return json_response(request, page)


@router.get(
    "/messages/{message_id}/events",
    response_model=MessageEventList,
    summary="Every status transition of a message, in order",
)
async def list_message_events(request: Request, message_id: str, ctx: ReadKey) -> Response:
    async with runtime(request).db.read_session() as session:
        message = await get_message_or_raise(session, ctx.account_id, message_id)
        events = await list_events(session, message.id)
        page = MessageEventList(
            data=[
                MessageEventOut(
                    seq=e.seq,
                    status=e.status,
                    at=e.at,
                    error_code=e.error_code,
                    detail=client_event_detail(e.detail),
                )
                for e in events
            ]
        )
    return json_response(request, page)


# Which worker process held a message is operator information (host names, process ids); it
# stays in the database for operators and is not shown to clients.
_INTERNAL_EVENT_KEYS = frozenset({"worker", "reclaimed_from"})


def client_event_detail(detail: dict[str, Any] | None) -> dict[str, Any] | None:
    if not detail:
        return detail
    return {k: v for k, v in detail.items() if k not in _INTERNAL_EVENT_KEYS}


@router.delete(
    "/messages/{message_id}",
    response_model=MessageOut,
    summary="Cancel a scheduled or queued message",
)
async def cancel_message_route(request: Request, message_id: str, ctx: SendKey) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        message = await cancel_message(session, ctx.account_id, message_id, now=utc_now())
        out = message_out(message)
    return json_response(request, out)
