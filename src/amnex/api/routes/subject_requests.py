"""API: data-subject requests — `/v1/privacy/requests` (the client, as controller, for a
recipient of its messages) and `/admin/v1/privacy/requests` (the operator, for one account or
the whole platform, with `X-Amnex-Reason`).

Every endpoint needs the `manage` scope: a request discloses or destroys a person's records.
Filing processes the request at once (`privacy.requests`); reads are audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from amnex.accounts.service import KeyContext, OperatorContext
from amnex.api.deps import Reason, json_response, require_operator, require_scope, runtime
from amnex.config import Settings
from amnex.privacy import requests as dsr
from amnex.privacy.audit import record_access
from amnex.privacy.records import Records, RecordsFile, build_records, load_records_file

Manager = Annotated[KeyContext, Depends(require_scope("manage"))]
Operator = Annotated[OperatorContext, Depends(require_operator)]

RequestType = Literal[
    "access", "portability", "rectification", "erasure", "restriction", "objection"
]
RequestStatus = Literal["received", "in_progress", "completed", "rejected"]


class SubjectRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: RequestType
    address: str = Field(min_length=1, max_length=320, description="A phone number or email.")
    note: str | None = Field(None, max_length=500)
    corrections: dict[str, str] | None = Field(
        None,
        max_length=3,
        description="A rectification's corrected contact data: any of `contact_name`, "
        "`email`, `phone`.",
    )


class AdminSubjectRequestCreate(SubjectRequestCreate):
    account_id: str | None = Field(
        None, max_length=40, description="The account concerned; omitted: every account."
    )


class Extension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(ge=1, le=dsr.EXTENSION_MAX_DAYS)
    reason: str = Field(min_length=1, max_length=500)


class SubjectRequestEventOut(BaseModel):
    at: datetime
    action: str
    actor: str
    detail: dict[str, Any] | None


class SubjectRequestOut(BaseModel):
    id: str
    account_id: str | None
    type: str
    channel_kind: str
    address: str | None = Field(description="The subject's address while open; null after.")
    address_masked: str
    note: str | None
    status: str
    received_at: datetime
    due_at: datetime
    extended_until: datetime | None
    extension_reason: str | None
    requested_by: str
    result: dict[str, Any] | None
    completed_at: datetime | None
    events: list[SubjectRequestEventOut] | None = None


class SubjectRequestList(BaseModel):
    data: list[SubjectRequestOut]
    next_cursor: str | None = None


def _key_actor(ctx: KeyContext) -> dsr.Actor:
    actor = f"api_key:{ctx.key_id}"
    return dsr.Actor(audit=actor, pseudonym=actor)


def _operator_actor(op: OperatorContext, reason: str) -> dsr.Actor:
    return dsr.Actor(
        audit=op.actor,
        pseudonym=f"operator:{op.operator_id}",
        actor_id=op.operator_id,
        reason=reason,
    )


async def _out(session: AsyncSession, request: dsr.SubjectRequest) -> SubjectRequestOut:
    events = await dsr.request_events(session, request.id)
    return SubjectRequestOut(**dsr.subject_request_out(request, events))


def _zip(request: Request, request_id: str, data: bytes) -> Response:
    return Response(
        data,
        media_type="application/zip",
        headers={
            **(getattr(request.state, "rate_headers", {}) or {}),
            "Content-Disposition": f'attachment; filename="{request_id}.zip"',
        },
    )


def routers(settings: Settings) -> list[APIRouter]:
    """The routers, over the operator's records file (included in every access export)."""
    operator_file = load_records_file(settings)
    client = APIRouter(prefix="/v1/privacy/requests", tags=["privacy"])
    admin = APIRouter(prefix="/admin/v1/privacy/requests", tags=["admin"])
    _client_routes(client, operator_file)
    _admin_routes(admin, operator_file)
    return [client, admin]


async def _records(session: AsyncSession, request: Request, file: RecordsFile | None) -> Records:
    return await build_records(session, runtime(request).settings, file)


def _client_routes(router: APIRouter, operator_file: RecordsFile | None) -> None:
    @router.post(
        "",
        status_code=201,
        response_model=SubjectRequestOut,
        summary="File a data-subject request for a recipient (processed at once)",
    )
    async def file_request(request: Request, ctx: Manager, body: SubjectRequestCreate) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            filed = await dsr.file_subject_request(
                session,
                account_id=ctx.account_id,
                type_=body.type,
                address=body.address,
                note=body.note,
                corrections=body.corrections,
                actor=_key_actor(ctx),
                records=await _records(session, request, operator_file),
                export_ttl_days=runtime(request).settings.subject_export_ttl_days,
            )
            out = await _out(session, filed)
        return json_response(
            request, out, status_code=201, headers={"Location": f"/v1/privacy/requests/{out.id}"}
        )

    @router.get("", response_model=SubjectRequestList, summary="The account's requests")
    async def list_requests(
        request: Request,
        ctx: Manager,
        status: Annotated[RequestStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=40)] = None,
    ) -> Response:
        db = runtime(request).db
        async with db.read_session() as session:
            rows, next_cursor = await dsr.list_subject_requests(
                session, ctx.account_id, status=status, limit=limit, after=cursor
            )
            page = SubjectRequestList(
                data=[SubjectRequestOut(**dsr.subject_request_out(r)) for r in rows],
                next_cursor=next_cursor,
            )
        await record_access(
            db,
            actor=f"api_key:{ctx.key_id}",
            action="subject_request.list",
            target_type="subject_request",
            target_id="*",
            account_id=ctx.account_id,
            detail={"ids": [r.id for r in page.data]},
        )
        return json_response(request, page)

    @router.get("/{request_id}", response_model=SubjectRequestOut, summary="One request")
    async def get_request(request: Request, ctx: Manager, request_id: str) -> Response:
        db = runtime(request).db
        async with db.read_session() as session:
            found = await dsr.get_subject_request_or_raise(session, request_id, ctx.account_id)
            out = await _out(session, found)
        await record_access(
            db,
            actor=f"api_key:{ctx.key_id}",
            action="subject_request.read",
            target_type="subject_request",
            target_id=out.id,
            account_id=ctx.account_id,
        )
        return json_response(request, out)

    @router.post(
        "/{request_id}/extend",
        response_model=SubjectRequestOut,
        summary="Extend the deadline once, by up to two months",
    )
    async def extend(request: Request, ctx: Manager, request_id: str, body: Extension) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            found = await dsr.get_subject_request_or_raise(session, request_id, ctx.account_id)
            await dsr.extend_subject_request(
                session, found, days=body.days, reason=body.reason, actor=_key_actor(ctx)
            )
            out = await _out(session, found)
        return json_response(request, out)

    @router.post(
        "/{request_id}/process",
        response_model=SubjectRequestOut,
        summary="Carry an open request further (an erasure waiting for in-flight messages)",
    )
    async def process(request: Request, ctx: Manager, request_id: str) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            found = await dsr.get_subject_request_or_raise(session, request_id, ctx.account_id)
            await dsr.process_subject_request(
                session, found, _key_actor(ctx), await _records(session, request, operator_file)
            )
            out = await _out(session, found)
        return json_response(request, out)

    @router.get(
        "/{request_id}/export",
        summary="The ZIP of an access or portability request",
        responses={200: {"content": {"application/zip": {}}}},
    )
    async def export(request: Request, ctx: Manager, request_id: str) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            found = await dsr.get_subject_request_or_raise(session, request_id, ctx.account_id)
            data = await dsr.get_export_or_raise(session, found, _key_actor(ctx))
        return _zip(request, request_id, data)


def _admin_routes(router: APIRouter, operator_file: RecordsFile | None) -> None:
    @router.post(
        "",
        status_code=201,
        response_model=SubjectRequestOut,
        summary="File a data-subject request for an account or the whole platform",
    )
    async def file_request(
        request: Request, op: Operator, reason: Reason, body: AdminSubjectRequestCreate
    ) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            filed = await dsr.file_subject_request(
                session,
                account_id=body.account_id,
                type_=body.type,
                address=body.address,
                note=body.note,
                corrections=body.corrections,
                actor=_operator_actor(op, reason),
                records=await _records(session, request, operator_file),
                export_ttl_days=runtime(request).settings.subject_export_ttl_days,
            )
            out = await _out(session, filed)
        return json_response(
            request,
            out,
            status_code=201,
            headers={"Location": f"/admin/v1/privacy/requests/{out.id}"},
        )

    @router.get("", response_model=SubjectRequestList, summary="Requests of every account")
    async def list_requests(
        request: Request,
        op: Operator,
        reason: Reason,
        account_id: Annotated[str | None, Query(max_length=40)] = None,
        status: Annotated[RequestStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=40)] = None,
    ) -> Response:
        db = runtime(request).db
        async with db.read_session() as session:
            rows, next_cursor = await dsr.list_subject_requests(
                session, account_id, any_account=True, status=status, limit=limit, after=cursor
            )
            page = SubjectRequestList(
                data=[SubjectRequestOut(**dsr.subject_request_out(r)) for r in rows],
                next_cursor=next_cursor,
            )
        await record_access(
            db,
            actor=op.actor,
            actor_id=op.operator_id,
            action="subject_request.list",
            target_type="subject_request",
            target_id="*",
            chain="platform",
            detail={"ids": [r.id for r in page.data]},
            reason=reason,
        )
        return json_response(request, page)

    @router.get("/{request_id}", response_model=SubjectRequestOut, summary="One request")
    async def get_request(
        request: Request, op: Operator, reason: Reason, request_id: str
    ) -> Response:
        db = runtime(request).db
        async with db.read_session() as session:
            found = await dsr.get_subject_request_or_raise(
                session, request_id, None, any_account=True
            )
            out = await _out(session, found)
        await record_access(
            db,
            actor=op.actor,
            actor_id=op.operator_id,
            action="subject_request.read",
            target_type="subject_request",
            target_id=out.id,
            account_id=out.account_id,
            reason=reason,
        )
        return json_response(request, out)

    @router.post("/{request_id}/extend", response_model=SubjectRequestOut, summary="Extend")
    async def extend(
        request: Request, op: Operator, reason: Reason, request_id: str, body: Extension
    ) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            found = await dsr.get_subject_request_or_raise(
                session, request_id, None, any_account=True
            )
            await dsr.extend_subject_request(
                session,
                found,
                days=body.days,
                reason=body.reason,
                actor=_operator_actor(op, reason),
            )
            out = await _out(session, found)
        return json_response(request, out)

    @router.post("/{request_id}/process", response_model=SubjectRequestOut, summary="Process")
    async def process(request: Request, op: Operator, reason: Reason, request_id: str) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            found = await dsr.get_subject_request_or_raise(
                session, request_id, None, any_account=True
            )
            await dsr.process_subject_request(
                session,
                found,
                _operator_actor(op, reason),
                await _records(session, request, operator_file),
            )
            out = await _out(session, found)
        return json_response(request, out)

    @router.get(
        "/{request_id}/export",
        summary="The ZIP of an access or portability request",
        responses={200: {"content": {"application/zip": {}}}},
    )
    async def export(request: Request, op: Operator, reason: Reason, request_id: str) -> Response:
        async with runtime(request).db.unit_of_work() as session:
            found = await dsr.get_subject_request_or_raise(
                session, request_id, None, any_account=True
            )
            data = await dsr.get_export_or_raise(session, found, _operator_actor(op, reason))
        return _zip(request, request_id, data)
