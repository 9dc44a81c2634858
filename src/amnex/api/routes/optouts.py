"""API: `/v1/opt-outs` — an account's suppression list; `/admin/v1/opt-outs` — the platform's.

Reading needs the `read` scope, changing needs `send` or `manage`. Every change is recorded by
the service as an opt-out event; operators' changes and reads are also audited. The helpers
the consent routes share (either-scope keys, Idempotency-Key on a create, CSV export) live
here too.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response, StreamingResponse

from amnex.accounts.service import KeyContext
from amnex.api.deps import authorize, json_response, require_scope, runtime
from amnex.api.routes.admin import Operator
from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.errors import IdempotencyKeyReused, InvalidRequest, NotFound, PermissionDenied
from amnex.messages import idempotency
from amnex.messages.models import IdempotencyRecord
from amnex.privacy.audit import record_access, record_audit
from amnex.recipients import service
from amnex.recipients.models import OptOut

router = APIRouter(prefix="/v1", tags=["opt-outs"])
admin_router = APIRouter(prefix="/admin/v1", tags=["admin"])

# Shared helpers (also used by the consent routes)


def require_any_scope(*scopes: str) -> Callable[[Request], Awaitable[KeyContext]]:
    """A key holding any one of `scopes` (checked, like `authorize`, before the rate limit)."""

    async def authenticate(request: Request) -> KeyContext:
        for scope in scopes[:-1]:
            try:
                return await authorize(request, scope)
            except PermissionDenied:
                continue
        try:
            return await authorize(request, scopes[-1])
        except PermissionDenied:
            raise PermissionDenied(
                f"this API key lacks the {' or '.join(f'`{s}`' for s in scopes)} scope"
            ) from None

    return authenticate


ReadKey = Annotated[KeyContext, Depends(require_scope("read"))]
WriteKey = Annotated[KeyContext, Depends(require_any_scope("send", "manage"))]
# Evidence is a flat object; `service.check_evidence` applies the limits.
Evidence = dict[str, str | bool | int | None]
ExportFormat = Literal["json", "csv"]


def key_actor(ctx: KeyContext) -> str:
    return f"api_key:{ctx.key_id}"


async def audit_read(
    db: Database,
    ctx: KeyContext,
    action: str,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Audit a client user's read of personal data, before it is served (privacy.audit);
    an `address` in `detail` (a list filter) is personal, kept apart from the chain."""
    await record_access(
        db,
        actor=key_actor(ctx),
        action=action,
        target_type=target_type,
        target_id=target_id,
        account_id=ctx.account_id,
        detail=detail,
        personal=("address",),
    )


def export_filters(filters: Any) -> dict[str, Any]:
    """The filters of an export, as its audit entry records them (unset ones left out)."""
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in asdict(filters).items()
        if value is not None
    }


def check_time_filters(**values: datetime | None) -> None:
    for name, value in values.items():
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name}: give a time zone offset (e.g. Z)", field=name)


@dataclass(frozen=True, slots=True)
class IdempotentCreate:
    """A create request's Idempotency-Key and body, as hashes (see `messages.idempotency`).

    The endpoint is part of the request hash, so a key first used on another endpoint is
    `idempotency_key_reused`, never a replay of the wrong kind of resource.
    """

    account_id: str
    key_hash: str
    request_hash: str

    @classmethod
    def of(
        cls, request: Request, account_id: str, endpoint: str, body: BaseModel
    ) -> IdempotentCreate | None:
        key = request.headers.get("idempotency-key")
        if key is None:
            return None
        return cls(
            account_id=account_id,
            key_hash=idempotency.hash_idempotency_key(key),
            request_hash=idempotency.hash_request(
                {"endpoint": endpoint, "body": body.model_dump(mode="json", exclude_unset=True)}
            ),
        )

    async def replay(
        self,
        request: Request,
        load: Callable[[AsyncSession, str], Awaitable[BaseModel]],
        location: Callable[[str], str],
    ) -> Response | None:
        """The first answer again (the resource as it is now), or None if the key is new."""
        db = runtime(request).db
        record = await idempotency.find_idempotency_record(
            db, self.account_id, self.key_hash, now=utc_now()
        )
        if record is None:
            return None
        if record.request_hash != self.request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request in the last 24 hours"
            )
        async with db.read_session() as session:
            try:
                out = await load(session, record.resource_id)
            except NotFound:
                raise NotFound(
                    f"the resource this Idempotency-Key created, {record.resource_id}, has "
                    "since been deleted"
                ) from None
        return json_response(
            request,
            out,
            status_code=record.status_code,
            headers={"Idempotent-Replayed": "true", "Location": location(record.resource_id)},
        )

    def remember(
        self, request: Request, session: AsyncSession, resource_id: str, status_code: int
    ) -> None:
        """Store the key in the transaction that creates the resource."""
        session.add(
            IdempotencyRecord(
                **idempotency.idempotency_row(
                    account_id=self.account_id,
                    key_hash=self.key_hash,
                    request_hash=self.request_hash,
                    resource_id=resource_id,
                    status_code=status_code,
                    now=utc_now(),
                    ttl_s=runtime(request).settings.idempotency_ttl_s,
                )
            )
        )


async def create_idempotently(
    request: Request,
    idem: IdempotentCreate | None,
    create: Callable[[AsyncSession], Awaitable[tuple[str, int, BaseModel]]],
    load: Callable[[AsyncSession, str], Awaitable[BaseModel]],
    location: Callable[[str], str],
) -> Response:
    """Run `create` (→ id, status, body) in one unit of work with its Idempotency-Key, or
    answer as the first request with that key did. Two requests racing with one key: the
    loser's transaction fails on the key and it replays the winner's answer."""
    if idem is not None:
        replayed = await idem.replay(request, load, location)
        if replayed is not None:
            return replayed
    try:
        async with runtime(request).db.unit_of_work() as session:
            resource_id, status_code, out = await create(session)
            if idem is not None:
                idem.remember(request, session, resource_id, status_code)
    except IntegrityError:
        replayed = await idem.replay(request, load, location) if idem is not None else None
        if replayed is None:
            raise
        return replayed
    return json_response(
        request, out, status_code=status_code, headers={"Location": location(resource_id)}
    )


def wants_csv(request: Request, format_: ExportFormat | None) -> bool:
    if format_ is not None:
        return format_ == "csv"
    return "text/csv" in request.headers.get("accept", "").lower()


# A spreadsheet runs a cell that starts like a formula; E.164 numbers (`+1312…`) stay as they
# are, anything else that could start a formula is prefixed with an apostrophe.
_FORMULA_START = ("=", "@", "+", "-", "\t", "\r")
_SIGNED_NUMBER = re.compile(r"[+-]\d+")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    if text.startswith(_FORMULA_START) and not _SIGNED_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_response(
    request: Request,
    filename: str,
    columns: Sequence[str],
    pages: AsyncIterator[list[dict[str, Any]]],
) -> StreamingResponse:
    """Every row the pages yield, as CSV, streamed (each page is read in its own session)."""

    async def body() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(columns)
        async for page in pages:
            for row in page:
                writer.writerow([_csv_cell(row[c]) for c in columns])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue()

    headers = dict(getattr(request.state, "rate_headers", {}) or {})
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers=headers)


EXPORT_PAGE_SIZE = 1000
R = TypeVar("R")


async def export_pages(
    db: Database,
    fetch: Callable[[AsyncSession, str | None], Awaitable[tuple[Sequence[R], str | None]]],
    out: Callable[[R], dict[str, Any]],
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every row `fetch` lists, page by page (`EXPORT_PAGE_SIZE`), each page in its own
    session, as `out` renders it: what `csv_response` streams."""
    after: str | None = None
    while True:
        async with db.read_session() as session:
            rows, after = await fetch(session, after)
        yield [out(row) for row in rows]
        if after is None:
            return


# Schemas

OptOutChannel = Literal["sms", "mms", "email", "push", "all"]
ClientOptOutSource = Literal[
    "api", "keyword", "free_text_reply", "bounce", "complaint", "unsubscribe_link"
]
OptOutSource = Literal[
    "api",
    "keyword",
    "free_text_reply",
    "bounce",
    "complaint",
    "unsubscribe_link",
    "operator",
    "subject_request",
]


class _OptOutFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: OptOutChannel = Field(description='A channel, or "all" for every channel.')
    address: str = Field(min_length=1, max_length=320)
    evidence: Evidence | None = Field(
        None, description="E.g. the reply's text and the inbound message id."
    )


class OptOutCreate(_OptOutFields):
    source: ClientOptOutSource = Field("api", description="How the recipient opted out.")


class AdminOptOutCreate(_OptOutFields):
    source: OptOutSource = Field("operator", description="How the recipient opted out.")


class OptOutOut(BaseModel):
    id: str
    account_id: str | None
    channel: str
    address: str | None = Field(
        description="Null once an erasure left only the suppression marker (its blind index)."
    )
    source: str
    evidence: dict[str, Any] | None
    created_at: datetime


class OptOutList(BaseModel):
    data: list[OptOutOut]
    next_cursor: str | None = None


OPT_OUT_COLUMNS = tuple(OptOutOut.model_fields)


def opt_out_out(opt_out: OptOut) -> OptOutOut:
    return OptOutOut(**service.opt_out_out(opt_out))


def _location(opt_out_id: str) -> str:
    return f"/v1/opt-outs/{opt_out_id}"


def _filters(
    channel: OptOutChannel | None,
    address: str | None,
    source: OptOutSource | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> service.OptOutFilter:
    check_time_filters(created_after=created_after, created_before=created_before)
    return service.OptOutFilter(
        channel=channel,
        address=address,
        source=source,
        created_after=created_after,
        created_before=created_before,
    )


async def _create_opt_out(
    session: AsyncSession, account_id: str | None, body: OptOutCreate | AdminOptOutCreate
) -> tuple[OptOut, bool]:
    service.check_evidence(body.evidence)
    return await service.add_opt_out(
        session,
        account_id=account_id,
        channel=body.channel,
        address=body.address,
        source=body.source,
        evidence=body.evidence,
    )


# Client API


@router.get(
    "/opt-outs",
    response_model=OptOutList,
    summary="List the account's opt-outs, newest first (or export them all as CSV)",
    responses={200: {"content": {"text/csv": {}}}},
)
async def list_opt_outs(
    request: Request,
    ctx: ReadKey,
    channel: Annotated[OptOutChannel | None, Query()] = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
    source: Annotated[OptOutSource | None, Query()] = None,
    created_after: Annotated[datetime | None, Query()] = None,
    created_before: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    format_: Annotated[ExportFormat | None, Query(alias="format")] = None,
) -> Response:
    filters = _filters(channel, address, source, created_after, created_before)
    db = runtime(request).db
    if wants_csv(request, format_):

        def fetch(session: AsyncSession, after: str | None) -> Awaitable[Any]:
            return service.list_opt_outs(
                session, ctx.account_id, filters, limit=EXPORT_PAGE_SIZE, cursor=after
            )

        await audit_read(db, ctx, "opt_out.export", "opt_out", "*", export_filters(filters))
        pages = export_pages(db, fetch, service.opt_out_out)
        return csv_response(request, "opt-outs.csv", OPT_OUT_COLUMNS, pages)
    async with db.read_session() as session:
        rows, next_cursor = await service.list_opt_outs(
            session, ctx.account_id, filters, limit=limit, cursor=cursor
        )
        page = OptOutList(data=[opt_out_out(o) for o in rows], next_cursor=next_cursor)
    await audit_read(
        db,
        ctx,
        "opt_out.list",
        "opt_out",
        "*",
        {
            "count": len(page.data),
            "ids": [o.id for o in page.data],
            **({"address": address} if address else {}),
        },
    )
    return json_response(request, page)


@router.post(
    "/opt-outs",
    status_code=201,
    response_model=OptOutOut,
    summary="Add an address to the account's suppression list",
    description=(
        "Answers 201 with a new opt-out, or 200 with the one that already suppresses this "
        "(channel, address): adding twice is harmless and records one event."
    ),
    responses={200: {"model": OptOutOut, "description": "Already on the list"}},
)
async def create_opt_out(request: Request, body: OptOutCreate, ctx: WriteKey) -> Response:
    async def create(session: AsyncSession) -> tuple[str, int, BaseModel]:
        opt_out, new = await _create_opt_out(session, ctx.account_id, body)
        return opt_out.id, 201 if new else 200, opt_out_out(opt_out)

    async def load(session: AsyncSession, opt_out_id: str) -> BaseModel:
        return opt_out_out(await service.get_opt_out_or_raise(session, ctx.account_id, opt_out_id))

    idem = IdempotentCreate.of(request, ctx.account_id, "POST /v1/opt-outs", body)
    return await create_idempotently(request, idem, create, load, _location)


@router.get("/opt-outs/{opt_out_id}", response_model=OptOutOut, summary="Get an opt-out")
async def get_opt_out(request: Request, opt_out_id: str, ctx: ReadKey) -> Response:
    db = runtime(request).db
    async with db.read_session() as session:
        opt_out = await service.get_opt_out_or_raise(session, ctx.account_id, opt_out_id)
        out = opt_out_out(opt_out)
    await audit_read(db, ctx, "opt_out.read", "opt_out", out.id)
    return json_response(request, out)


@router.delete(
    "/opt-outs/{opt_out_id}",
    status_code=204,
    summary="Remove an opt-out (the recipient subscribed again)",
)
async def delete_opt_out(request: Request, opt_out_id: str, ctx: WriteKey) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        await service.delete_opt_out(
            session, ctx.account_id, opt_out_id, source="api", evidence={"by": key_actor(ctx)}
        )
    return Response(status_code=204)


# Operator API: platform-wide opt-outs (account_id null), audited


@admin_router.get("/opt-outs", response_model=OptOutList)
async def admin_list_opt_outs(
    request: Request,
    op: Operator,
    channel: Annotated[OptOutChannel | None, Query()] = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
    source: Annotated[OptOutSource | None, Query()] = None,
    created_after: Annotated[datetime | None, Query()] = None,
    created_before: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    filters = _filters(channel, address, source, created_after, created_before)
    # Addresses are personal data: the read is audited like a change.
    async with runtime(request).db.unit_of_work() as session:
        rows, next_cursor = await service.list_opt_outs(
            session, None, filters, limit=limit, cursor=cursor
        )
        record_audit(
            session,
            actor=op.actor,
            action="opt_out.list",
            target_type="opt_out",
            target_id="*",
            detail={"count": len(rows)},
        )
        page = OptOutList(data=[opt_out_out(o) for o in rows], next_cursor=next_cursor)
    return json_response(request, page)


@admin_router.post(
    "/opt-outs",
    status_code=201,
    response_model=OptOutOut,
    responses={200: {"model": OptOutOut, "description": "Already on the list"}},
)
async def admin_create_opt_out(request: Request, body: AdminOptOutCreate, op: Operator) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        opt_out, new = await _create_opt_out(session, None, body)
        record_audit(
            session,
            actor=op.actor,
            action="opt_out.create",
            target_type="opt_out",
            target_id=opt_out.id,
            detail={"channel": opt_out.channel, "source": opt_out.source, "new": new},
        )
        out = opt_out_out(opt_out)
    return json_response(request, out, status_code=201 if new else 200)


@admin_router.delete("/opt-outs/{opt_out_id}", status_code=204)
async def admin_delete_opt_out(request: Request, opt_out_id: str, op: Operator) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        opt_out = await service.delete_opt_out(
            session, None, opt_out_id, source="operator", evidence={"by": op.actor}
        )
        record_audit(
            session,
            actor=op.actor,
            action="opt_out.delete",
            target_type="opt_out",
            target_id=opt_out.id,
            detail={"channel": opt_out.channel},
        )
    return Response(status_code=204)
